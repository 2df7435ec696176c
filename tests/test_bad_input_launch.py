"""Bad input met by every rank of a `tune run --nproc-per-node 2` launch: one `error:` line, not one per rank.

The ranks refuse a mesh the launch cannot have as their first setup step; each would print the same
line, so under torchrun a rank writes it to its per-worker error file and the launcher prints the
first failing rank's line once, with the rank's exit status 2. Nothing the user had is touched.
Three torch processes (the launch and two ranks): slow tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_support import assert_refused
from test_recipe_support import make_tiny

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_a_mesh_the_launch_cannot_have_is_refused_once(tmp_path: Path) -> None:
    model, data = make_tiny(tmp_path / "inputs")
    (tmp_path / "run.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\ndevice: cpu\nprecision: fp32\nbatch_size: 1\nmax_steps: 2\n"
    )
    assert_refused(
        "run",
        "--nproc-per-node",
        "2",
        "full_finetune_distributed",
        "--config",
        "run.yaml",
        "dp_shard=3",
        cwd=tmp_path,
        names=["dp_shard=3", "world size 2"],
    )
