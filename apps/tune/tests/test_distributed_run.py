"""Distributed flags hand a run to torchrun: a user's recipe file declaring DISTRIBUTED runs on 2 ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tune_support import run_tune

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

RECIPE = '''\
"""A user recipe that records which rank ran it."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

DISTRIBUTED = True


@dataclass
class Config:
    output_dir: str
    message: str = "hello"


def main(cfg: Config) -> None:
    rank = os.environ["RANK"]
    record = {"rank": rank, "world": os.environ["WORLD_SIZE"], "message": cfg.message}
    (Path(cfg.output_dir) / f"rank{rank}.json").write_text(json.dumps(record))
'''


def test_torchrun_runs_the_recipe_on_every_rank(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(RECIPE)
    (tmp_path / "my.yaml").write_text(f"output_dir: {tmp_path / 'out'}\n")
    out = run_tune(
        "run",
        str(tmp_path / "my_recipe.py"),
        "--config",
        str(tmp_path / "my.yaml"),
        "message=hi",
        "--nproc-per-node",
        "2",
        cwd=tmp_path,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = sorted(json.loads(p.read_text())["rank"] for p in (tmp_path / "out").glob("rank*.json"))
    assert records == ["0", "1"]
    assert json.loads((tmp_path / "out" / "rank1.json").read_text()) == {
        "rank": "1",
        "world": "2",
        "message": "hi",
    }
    # Every run writes its resolved config to the output directory.
    assert (tmp_path / "out" / "config.yaml").read_text() == f"output_dir: {tmp_path / 'out'}\nmessage: hi\n"
