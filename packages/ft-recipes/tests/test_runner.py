"""``ft_recipes.runner.run`` writes ``output_dir/config.yaml`` only once the recipe got past its setup.

A recipe here is a small module written to a temp directory (as a user's copied recipe would be):
``main`` either calls ``write_resolved_config`` after its own setup, fails before that, or never calls
it. The previous run's file must survive a failure byte for byte; a finished run leaves the resolved
config and no temporary file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ft_recipes.runner import load_recipe, prepare, run, write_resolved_config

RECIPE = """
from dataclasses import dataclass
from pathlib import Path

from ft_recipes.runner import write_resolved_config


@dataclass
class Config:
    output_dir: str
    mode: str = "calls"
    note: str = ""


def main(cfg: Config) -> None:
    out = Path(cfg.output_dir)
    if cfg.mode == "fails_in_setup":
        raise RuntimeError("setup failed")
    if cfg.mode == "calls":
        write_resolved_config(cfg.output_dir)
        # Written at the end of setup, before the rest of the run.
        (out / "seen.txt").write_text((out / "config.yaml").read_text())
    (out / "done.txt").write_text("done")
"""


@pytest.fixture
def recipe(tmp_path: Path) -> tuple[object, Path]:
    (tmp_path / "my_recipe.py").write_text(RECIPE)
    (tmp_path / "my.yaml").write_text(f"output_dir: {tmp_path / 'out'}\nnote: 'first: run'\n")
    return load_recipe(str(tmp_path / "my_recipe.py")), tmp_path


def test_written_when_the_recipe_says_setup_is_done(recipe: tuple[object, Path]) -> None:
    module, tmp = recipe
    run(prepare(module, str(tmp / "my.yaml")))  # type: ignore[arg-type]
    out = tmp / "out"
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"output_dir": str(out), "note": "first: run"}
    assert (out / "seen.txt").read_text() == (out / "config.yaml").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "done.txt", "seen.txt"]  # no temp file


def test_written_after_main_when_the_recipe_never_calls_it(recipe: tuple[object, Path]) -> None:
    module, tmp = recipe
    run(prepare(module, str(tmp / "my.yaml"), ["mode=silent"]))  # type: ignore[arg-type]
    assert yaml.safe_load((tmp / "out" / "config.yaml").read_text())["mode"] == "silent"


def test_a_run_failing_in_setup_keeps_the_previous_config(recipe: tuple[object, Path]) -> None:
    module, tmp = recipe
    run(prepare(module, str(tmp / "my.yaml")))  # type: ignore[arg-type]
    before = (tmp / "out" / "config.yaml").read_bytes()
    with pytest.raises(RuntimeError, match="setup failed"):
        run(prepare(module, str(tmp / "my.yaml"), ["mode=fails_in_setup", "note=second"]))  # type: ignore[arg-type]
    assert (tmp / "out" / "config.yaml").read_bytes() == before
    # The wrong variant, for contrast: a run that gets past setup does replace it.
    run(prepare(module, str(tmp / "my.yaml"), ["note=second"]))  # type: ignore[arg-type]
    assert (tmp / "out" / "config.yaml").read_bytes() != before


def test_only_rank_0_writes(recipe: tuple[object, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    module, tmp = recipe
    monkeypatch.setenv("RANK", "1")
    run(prepare(module, str(tmp / "my.yaml"), ["mode=silent"]))  # type: ignore[arg-type]
    assert not (tmp / "out" / "config.yaml").exists()
    assert (tmp / "out" / "done.txt").exists()


def test_nothing_is_written_outside_a_run(tmp_path: Path) -> None:
    assert write_resolved_config(tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
