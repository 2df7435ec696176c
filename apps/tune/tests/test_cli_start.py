"""The CLI starts without importing torch, through the real installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ft_tune


def _tune() -> list[str]:
    script = Path(sys.executable).with_name("tune")
    found = str(script) if script.exists() else shutil.which("tune")
    if found is None:
        pytest.fail("the `tune` console script is not installed in this environment")
    return [found]


def test_help_lists_usage_and_exits_zero() -> None:
    out = subprocess.run([*_tune(), "--help"], capture_output=True, text=True, check=True)
    assert "Usage: tune" in out.stdout


def test_version_matches_package() -> None:
    out = subprocess.run([*_tune(), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tune, version {ft_tune.__version__}"


@pytest.mark.parametrize("heavy", ["torch", "ft_recipes", "ft_models"])
def test_help_imports_nothing_heavy(heavy: str) -> None:
    # `-X importtime` lists every module the interpreter imported while running `tune --help`.
    code = "import sys; from ft_tune.cli import main; sys.argv = ['tune', '--help']; main()"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "click" in imported  # the probe sees real imports
    assert not any(name == heavy or name.startswith(heavy + ".") for name in imported)
