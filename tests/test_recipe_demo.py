"""The offline demo job, verbatim: LoRA on the real SmolLM2-135M-Instruct GGUF, base vs tuned scores.

Runs the command of ft-recipes' README in a fresh directory as a real subprocess and reads the two
printed held-out scores (exact match on generated dates the training never saw). Then runs README.md's
generate command on the result, as README.md writes it (found by ``readme_support``, run with this
environment's ``tune`` instead of ``uv run --locked tune``), and reads the normalised date it prints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from readme_support import tune_commands

pytestmark = [pytest.mark.slow, pytest.mark.long]

COMMAND = "tune run lora_finetune_single_device --config smollm2/135M_lora_demo"
ROOT = Path(__file__).resolve().parents[1]
# The repository's main job and the ft-recipes documentation both give this command.
READMES = [ROOT / "README.md", ROOT / "packages" / "ft-recipes" / "README.md"]


def test_demo_job_tunes_the_real_model_past_80(tmp_path: Path) -> None:
    for readme in READMES:
        assert COMMAND in readme.read_text(), readme
    args = shlex.split(COMMAND)
    args[0] = str(Path(sys.executable).parent / "tune")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # the check's share
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"\[eval\] exact_match: base ([\d.]+) -> tuned ([\d.]+)", done.stdout)
    assert found, done.stdout
    base, tuned = float(found[1]), float(found[2])
    assert tuned >= 80, (base, tuned)
    assert tuned - base >= 40, (base, tuned)
    out = tmp_path / "output" / "smollm2-135M-lora-demo"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert len((out / "eval_tuned.jsonl").read_text().splitlines()) >= 50

    # README.md's next command: chat with the result.
    (generate,) = [c for c in tune_commands(ROOT / "README.md") if c.args[:2] == ("run", "generate")]
    assert any("3 July 1999" in arg for arg in generate.args), generate
    args = [str(Path(sys.executable).parent / "tune"), *generate.args]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1999-07-03" in done.stdout, (done.stdout, done.stderr[-2000:])
