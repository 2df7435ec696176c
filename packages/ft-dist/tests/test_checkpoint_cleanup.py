"""Checkpoint roots after interrupted saves and prunes: what ``clean_checkpoints`` removes, restores, keeps.

The leftovers are made the way an interrupted save or prune leaves them (real checkpoints, moved with the
same renames); ``test_checkpoint_kills.py`` produces them with real SIGKILLs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from dist_support import Tiny

import ft_dist
from ft_dist import CheckpointError


def _model(value: float) -> Tiny:
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def _save(root: Path, step: int, value: float, **kwargs: object) -> Path:
    state = {"train": ft_dist.ModelOptimizerState(_model(value)), "counters": {"step": step}}
    return ft_dist.save_checkpoint(root, step, app_state=state, **kwargs)  # type: ignore[arg-type]


def _value(checkpoint: Path) -> float:
    model = _model(-1.0)
    ft_dist.load_checkpoint(
        checkpoint, app_state={"train": ft_dist.ModelOptimizerState(model), "counters": {}}
    )
    values = {float(p.detach().flatten()[0]) for p in model.parameters()}
    assert len(values) == 1, values
    return values.pop()


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _user_files(root: Path) -> None:
    """Things ft must never touch: an unmarked step dir, a non-flat dir with an ft-like name, a file."""
    (root / "step_7").mkdir()
    (root / "step_7" / "notes.txt").write_text("mine")
    (root / ".tmp-step_8" / "sub").mkdir(parents=True)
    (root / ".del-step_9").write_text("a file, not a directory")
    (root / "notes").mkdir()


USER = [".del-step_9", ".tmp-step_8", "notes", "step_7"]


def test_save_prunes_beyond_keep_last_and_records_it(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, float(step), keep_last=2)
    assert _names(tmp_path) == ["step_3", "step_4"]
    assert ft_dist.checkpoint_info(tmp_path / "step_4") == {
        "format": 1,
        "step": 4,
        "world_size": 1,
        "keep_last": 2,
    }
    assert _value(tmp_path / "step_4") == 4.0
    # Wrong variant: without keep_last nothing is pruned.
    _save(tmp_path, 5, 5.0)
    assert _names(tmp_path) == ["step_3", "step_4", "step_5"]


def test_every_leftover_is_recognised(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, float(step))
    _user_files(tmp_path)
    # A save killed before its rename (its marker already inside), one killed mid-write.
    done = _save(tmp_path / "scratch", 4, 4.0)
    done.rename(tmp_path / ".tmp-step_4")
    (tmp_path / ".tmp-step_5").mkdir()
    (tmp_path / ".tmp-step_5" / "__0_0.distcp").write_bytes(b"partial")
    # A prune killed after its rename; a replacement of step_3 killed between its two renames.
    (tmp_path / "step_1").rename(tmp_path / ".del-step_1")
    (tmp_path / "step_3").rename(tmp_path / ".step_3.old-0123456789ab")
    shutil.rmtree(tmp_path / "scratch")
    assert ft_dist.latest_checkpoint(tmp_path) == tmp_path / "step_2"  # no leftover is taken for complete

    ft_dist.clean_checkpoints(tmp_path)
    assert _names(tmp_path) == sorted(["step_2", "step_3", *USER])
    assert _value(tmp_path / "step_3") == 3.0  # the moved-aside checkpoint is back, complete
    assert (tmp_path / "step_7" / "notes.txt").read_text() == "mine"


def test_moved_aside_copy_is_dropped_when_the_new_one_landed(tmp_path: Path) -> None:
    _save(tmp_path, 3, 3.0)
    old = _save(tmp_path / "scratch", 3, 30.0)
    old.rename(tmp_path / ".step_3.old-abcdefabcdef")
    (tmp_path / ".step_3.old-abcdefabcdef" / ".metadata").unlink()  # partly deleted already
    shutil.rmtree(tmp_path / "scratch")
    ft_dist.clean_checkpoints(tmp_path)
    assert _names(tmp_path) == ["step_3"]
    assert _value(tmp_path / "step_3") == 3.0


def test_prune_on_clean_spares_the_resumed_checkpoint(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, float(step))
    _user_files(tmp_path)
    ft_dist.clean_checkpoints(tmp_path, keep_last=2, keep=tmp_path / "step_1")
    assert _names(tmp_path) == sorted(["step_1", "step_3", "step_4", *USER])
    ft_dist.clean_checkpoints(tmp_path, keep_last=1)
    assert _names(tmp_path) == sorted(["step_4", *USER])


def test_is_checkpoint_and_info(tmp_path: Path) -> None:
    ckpt = _save(tmp_path, 2, 2.0, keep_last=3)
    assert ft_dist.is_checkpoint(ckpt)
    assert not ft_dist.is_checkpoint(tmp_path / "missing")
    marker = ckpt / ft_dist.MARKER
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "keep_last": "3"}))  # a hand-edited marker: ignored value
    assert ft_dist.checkpoint_info(ckpt) == {"format": 1, "step": 2, "world_size": 1}
    marker.write_text(json.dumps({**info, "format": 99}))
    assert not ft_dist.is_checkpoint(ckpt)
    assert ft_dist.checkpoint_info(ckpt) is None


def test_bad_keep_last_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"keep_last must be >= 1, got 0"):
        _save(tmp_path, 1, 1.0, keep_last=0)
    assert not tmp_path.exists() or _names(tmp_path) == []


def test_failed_prune_is_an_error_and_the_save_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save(tmp_path, 1, 1.0)

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(CheckpointError, match=r"step_2 saved, pruning failed \(PermissionError"):
        _save(tmp_path, 2, 2.0, keep_last=1)
    monkeypatch.undo()
    assert ft_dist.latest_checkpoint(tmp_path) == tmp_path / "step_2"
    ft_dist.clean_checkpoints(tmp_path, keep_last=1)
    assert _names(tmp_path) == ["step_2"]
