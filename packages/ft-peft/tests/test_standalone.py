"""ft-peft stands alone: a fresh environment with only ft-peft and torch fine-tunes a user's model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fresh_env_with_only_ft_peft_and_torch_fine_tunes(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed to build the fresh environment"
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run(
        [uv, "venv", "--python", sys.executable, str(venv)], check=True, env=env, capture_output=True
    )
    python = venv / "bin" / "python"
    torch_pin = f"torch=={version('torch').split('+')[0]}"  # the cached wheel: no large download
    install = [uv, "pip", "install", "--python", str(python), str(PACKAGE), torch_pin]
    if subprocess.run([*install, "--offline"], env=env, capture_output=True).returncode != 0:
        subprocess.run(install, check=True, env=env, capture_output=True)
    script = Path(__file__).with_name("standalone_finetune.py")
    done = subprocess.run(
        [str(python), str(script)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["present"] == []  # no other ft package, no transformers/peft/bitsandbytes
    assert result["modules"]
    assert all(m == "ft_peft" or m.startswith("ft_peft.") for m in result["modules"])
    assert result["replaced"] == ["0", "2", "4"]
    losses = result["losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result["base_unchanged"]
    assert result["adapters_changed"]
    assert result["round_trip"]
