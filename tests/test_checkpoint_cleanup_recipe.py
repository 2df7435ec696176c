"""A real `tune run` killed after its final save, before or during that save's prune, then `resume=auto`.

The kill comes from a model component beside the config (`killer.py`: the real
`ft_models.from_pretrained`, plus a wrapper of `Path.rename` that SIGKILLs the process at the rename the
test names through an environment variable; production code has no hook). The killed run leaves more
than `keep_last` checkpoints, or a half-deleted one; the resumed run (which has no step left to train)
tidies the root on resume and ends with exactly `keep_last` complete checkpoints and its adapter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipe_support import make_tiny

import ft_dist

pytestmark = pytest.mark.slow

KILLER = '''"""Test component: ft_models.from_pretrained plus a SIGKILL at the rename FT_TEST_KILL names."""
import os
import pathlib
import signal

import ft_models


def from_pretrained(path, **kwargs):
    model = ft_models.from_pretrained(path, **kwargs)
    how = os.environ.get("FT_TEST_KILL", "")
    if how:
        when, move = how.split(":", 1)
        real = pathlib.Path.rename

        def rename(self, target):
            hit = f"{self.name}->{pathlib.Path(target).name}" == move
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(self, target)
            if hit and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        pathlib.Path.rename = rename
    return model
'''


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keep_last")
    model_dir, data = make_tiny(root)
    (root / "killer.py").write_text(KILLER)
    (root / "cfg.yaml").write_text(
        "recipe: lora_finetune_single_device\n"
        f"model: {{_component_: killer.from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "lora: {target_modules: [q_proj, v_proj], rank: 2, alpha: 4}\n"
        "checkpoint: {every_n_steps: 1, keep_last: 2}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nmax_steps: 3\nseed: 1\n"
    )
    return root


def _tune(root: Path, out: Path, *overrides: str, kill: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_KILL": kill}
    cmd = [str(Path(sys.executable).parent / "tune"), "run", "lora_finetune_single_device"]
    return subprocess.run(
        [*cmd, "--config", str(root / "cfg.yaml"), f"output_dir={out}", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(
    ("kill", "left"),
    [
        ("before:step_1->.del-step_1", ["step_1", "step_2", "step_3"]),
        ("after:step_1->.del-step_1", [".del-step_1", "step_2", "step_3"]),
    ],
    ids=["before-prune", "mid-prune"],
)
def test_resume_after_a_kill_in_the_final_prune_keeps_keep_last(
    setup_files: Path, kill: str, left: list[str]
) -> None:
    out = setup_files / kill.split(":")[0]
    killed = _tune(setup_files, out, kill=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoints = out / "checkpoints"
    assert _names(checkpoints) == left  # more than keep_last, or a half-deleted one
    assert json.loads((checkpoints / "step_3" / ft_dist.MARKER).read_text())["keep_last"] == 2
    assert not (out / "adapter").exists()  # killed before the final adapter was written

    resumed = _tune(setup_files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert _names(checkpoints) == ["step_2", "step_3"]
    assert all(ft_dist.is_checkpoint(checkpoints / name) for name in ("step_2", "step_3"))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
