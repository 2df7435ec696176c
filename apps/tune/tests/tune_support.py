"""Helpers shared by the `tune` tests: the installed console script and a subprocess runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def tune_script() -> str:
    """Path of the installed `tune` console script of this environment."""
    script = Path(sys.executable).with_name("tune")
    found = str(script) if script.exists() else shutil.which("tune")
    if found is None:
        pytest.fail("the `tune` console script is not installed in this environment")
    return found


def run_tune(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `tune ARGS` in a real subprocess (one thread for torch, no colour)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [tune_script(), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
