"""`tune ls`, `cat`, `cp`, `validate`, `completion` through the runner and the installed script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tune_support import run_tune

import ft_recipes
import ft_tune
from ft_recipes.registry import RECIPES, shipped_configs
from ft_tune.cli import main

REPO = Path(__file__).resolve().parents[3]


def test_ls_lists_every_recipe_and_shipped_config() -> None:
    out = run_tune("ls")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert ["generate", "smollm2/135M_generate", "no"] in rows
    listed = {r[1] if len(r) == 3 else r[0] for r in rows}
    assert listed == {c for info in RECIPES.values() for c in info.configs}


def test_every_config_file_in_the_repo_is_registered_to_a_recipe() -> None:
    on_disk = {
        p.relative_to(REPO / "configs").with_suffix("").as_posix() for p in (REPO / "configs").rglob("*.yaml")
    }
    registered = {c for info in RECIPES.values() for c in info.configs}
    assert on_disk == registered
    assert set(shipped_configs()) == on_disk


@pytest.mark.parametrize("command", [["--help"], ["ls"]])
def test_help_and_ls_import_no_torch(command: list[str]) -> None:
    code = f"import sys; from ft_tune.cli import main; sys.argv = ['tune', *{command!r}]; main()"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "click" in imported
    if command == ["ls"]:
        assert "ft_recipes.registry" in imported  # the probe sees the registry being read
    heavy = ("torch", "ft_models", "ft_data", "ft_peft", "huggingface_hub", "numpy")
    assert not [n for n in imported if n.split(".")[0] in heavy]


def test_cat_prints_the_resolved_config_with_overrides() -> None:
    out = run_tune("cat", "smollm2/135M_generate", "max_new_tokens=7", "sampling.temperature=0.5", "~system")
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    source = yaml.safe_load((REPO / "configs/smollm2/135M_generate.yaml").read_text())
    assert data["max_new_tokens"] == 7
    assert data["sampling"]["temperature"] == 0.5
    assert "system" not in data
    assert data["tokenizer"]["path"] == source["model"]["path"]  # ${model.path} resolved
    assert list(data) == [k for k in source if k != "system"]  # written order kept


def test_validate_every_shipped_config() -> None:
    for name in shipped_configs():
        result = CliRunner().invoke(main, ["validate", name])
        assert result.exit_code == 0, (name, result.output)
        assert result.stdout.strip() == f"{name}: valid"


def test_cp_recipe_and_config_then_validate_the_copies(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["cp", "generate", str(tmp_path / "my_gen.py")]).exit_code == 0
    assert runner.invoke(main, ["cp", "smollm2/135M_generate", str(tmp_path / "my_gen")]).exit_code == 0
    copied = tmp_path / "my_gen.py"
    assert copied.read_text() == Path(ft_recipes.__file__).with_name("generate.py").read_text()
    assert (tmp_path / "my_gen.yaml").read_text() == (REPO / "configs/smollm2/135M_generate.yaml").read_text()
    again = runner.invoke(main, ["cp", "generate", str(copied)])
    assert again.exit_code == 2
    assert "already exists; pass --force" in again.stderr
    # The copy is a recipe of its own: an extra schema key added to it is accepted by it only.
    copied.write_text(
        copied.read_text().replace(
            "    max_new_tokens: PositiveInt = 256\n",
            "    max_new_tokens: PositiveInt = 256\n    banner: str = ''\n",
        )
    )
    ok = run_tune("validate", str(tmp_path / "my_gen.yaml"), "--recipe", str(copied), "banner=hello")
    assert ok.returncode == 0, ok.stderr
    refused = run_tune("validate", str(tmp_path / "my_gen.yaml"), "banner=hello")
    assert refused.returncode == 2
    assert "banner: unknown key" in refused.stderr


def test_version_and_completion() -> None:
    version = run_tune("--version")
    assert version.stdout.strip() == f"tune, version {ft_tune.__version__}"
    script = CliRunner().invoke(main, ["completion", "bash"])
    assert script.exit_code == 0
    assert "_TUNE_COMPLETE=bash_complete" in script.output
    # The completion protocol itself: ask the real script for the commands starting with "va".
    env = {"_TUNE_COMPLETE": "bash_complete", "COMP_WORDS": "tune va", "COMP_CWORD": "1"}
    out = run_tune(env=env)
    assert "validate" in out.stdout


@pytest.mark.parametrize(
    "command", [[], ["run"], ["cat"], ["validate"], ["cp"], ["download"], ["data", "inspect"], ["ls"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="tune")
    assert result.exit_code == 0
    assert "Usage: tune" in result.output
    assert len(result.output.splitlines()) > 3
