"""Bad-input corpus, distributed settings, through real `tune` processes with :func:`assert_refused`.

Schema bounds of the distributed keys are refused by `tune validate` before torch is imported; a mesh
a one-process run cannot have is refused by `tune run` as the run's first setup step (one process
importing torch); a single-device name with launch flags is refused before torch. So this module stays
in the default tier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}

OUT_OF_RANGE = [
    ("llama3_1/8B_full", "dp_shard=0", ["dp_shard: must be at least 1, got 0"]),
    ("llama3_1/70B_lora", "dp_replicate=-2", ["dp_replicate: must be at least 1, got -2"]),
    ("llama3_1/70B_qlora", "dist_timeout_s=0", ["dist_timeout_s: must be greater than 0, got 0"]),
    ("llama3_1/8B_lora_dpo", "dist_timeout_s=.inf", ["dist_timeout_s: must be a finite number"]),
    ("qwen3/14B_lora", "fsdp_offload=maybe", ["fsdp_offload"]),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Training data and a previous run's outputs, which no refusal may touch."""
    (tmp_path / "train.jsonl").write_text(json.dumps(CHAT) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("recipe: full_finetune_distributed\noutput_dir: out\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    return tmp_path


@pytest.mark.parametrize(("config", "override", "names"), OUT_OF_RANGE)
def test_validate_refuses_a_bad_distributed_setting(
    workdir: Path, config: str, override: str, names: list[str]
) -> None:
    assert_refused("validate", config, override, cwd=workdir, names=names)


def test_run_refuses_a_mesh_one_process_cannot_have(workdir: Path) -> None:
    assert_refused(
        "run",
        "full_finetune_distributed",
        "--config",
        "smollm2/135M_full",
        "dataset.source=train.jsonl",
        "output_dir=out",
        "resume=auto",
        "device=cpu",
        "dp_shard=2",
        cwd=workdir,
        names=["dp_shard=2", "world size 1"],
    )


def test_run_refuses_launch_flags_for_a_single_device_name(workdir: Path) -> None:
    assert_refused(
        "run",
        "--nproc-per-node",
        "2",
        "full_finetune_single_device",
        "--config",
        "smollm2/135M_full",
        "dataset.source=train.jsonl",
        "output_dir=out",
        cwd=workdir,
        names=["full_finetune_single_device", "runs on a single device"],
    )
