"""DCP checkpoints: exact round trip, exact continuation, atomic failure, markers, safe metadata."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_support import Tiny, loss_of

import ft_dist
from ft_dist import CheckpointError, UnsafeCheckpointError


def _setup(seed: int = 0) -> tuple[Tiny, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model: Tiny, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    # Data and dropout both draw from the global generators, so RNG restore matters.
    ids = torch.randint(0, 37, (2, 9))
    shift = random.randint(0, 3) + int(np.random.randint(0, 2))
    loss_of(model, (ids + shift) % 37).backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def _state(model: Tiny, opt: torch.optim.Optimizer, sched: object, counters: dict) -> dict:
    return {"train": ft_dist.ModelOptimizerState(model, opt), "sched": sched, "counters": counters}


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def test_round_trip_and_bit_exact_continuation(tmp_path: Path) -> None:
    _seed_all(1)
    model, opt, sched = _setup()
    for _ in range(3):
        _step(model, opt, sched)
    counters = {"step": 3, "tokens": torch.tensor(123, dtype=torch.int64), "rows": 6}
    ft_dist.save_checkpoint(
        tmp_path, 3, app_state=_state(model, opt, sched, counters), rank_state=ft_dist.rng_state()
    )
    for _ in range(4):  # the uninterrupted run
        _step(model, opt, sched)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    _seed_all(99)  # a fresh process would have other generator states
    fresh, fresh_opt, fresh_sched = _setup(seed=7)
    got_counters = {"step": 0, "tokens": torch.tensor(0, dtype=torch.int64), "rows": 0}
    ckpt = ft_dist.latest_checkpoint(tmp_path)
    assert ckpt == tmp_path / "step_3"
    rank_state = ft_dist.load_checkpoint(ckpt, app_state=_state(fresh, fresh_opt, fresh_sched, got_counters))
    assert rank_state is not None
    ft_dist.set_rng_state(rank_state)
    assert got_counters == {"step": 3, "tokens": torch.tensor(123), "rows": 6}
    assert fresh_sched.last_epoch == 3
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(3e-2 / 4)
    for _ in range(4):
        _step(fresh, fresh_opt, fresh_sched)
    for key, value in expected.items():
        assert torch.equal(fresh.state_dict()[key], value), key

    # Wrong variant: the same resume without restoring the RNG does not reproduce the run.
    _seed_all(99)
    other, other_opt, other_sched = _setup(seed=7)
    ft_dist.load_checkpoint(ckpt, app_state=_state(other, other_opt, other_sched, dict(got_counters)))
    for _ in range(4):
        _step(other, other_opt, other_sched)
    assert not torch.equal(other.state_dict()["head.weight"], expected["head.weight"])


def test_failing_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt, sched = _setup()
    _step(model, opt, sched)
    ft_dist.save_checkpoint(tmp_path, 1, app_state=_state(model, opt, sched, {"step": 1}))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, sched)

    real_fsync = os.fsync
    calls = {"n": 0}

    def full_disk(fd: int) -> None:  # fault injection: the second fsync of the save fails
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"step_2.*saving failed.*No space left"):
        ft_dist.save_checkpoint(tmp_path, 2, app_state=_state(model, opt, sched, {"step": 2}))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]
    assert ft_dist.latest_checkpoint(tmp_path) == tmp_path / "step_1"
    fresh, fresh_opt, fresh_sched = _setup(seed=3)
    ft_dist.load_checkpoint(tmp_path / "step_1", app_state=_state(fresh, fresh_opt, fresh_sched, {"step": 0}))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())


def test_latest_ignores_incomplete_and_prune_touches_only_marked(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    for step in (2, 10, 4):
        ft_dist.save_checkpoint(tmp_path, step, app_state=_state(model, opt, sched, {"step": step}))
    (tmp_path / ".tmp-step_12").mkdir()  # a crashed save
    (tmp_path / "step_11").mkdir()  # renamed but the marker never written
    (tmp_path / "step_1").mkdir()  # a user's directory with a checkpoint-like name
    (tmp_path / "step_1" / "notes.txt").write_text("mine")
    assert ft_dist.latest_checkpoint(tmp_path) == tmp_path / "step_10"
    with pytest.raises(CheckpointError, match=r"step_11.*not a complete ft checkpoint"):
        ft_dist.load_checkpoint(tmp_path / "step_11", app_state=_state(model, opt, sched, {"step": 0}))
    removed = ft_dist.prune_checkpoints(tmp_path, keep_last=2)
    assert removed == [tmp_path / "step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-step_12",
        "step_1",
        "step_10",
        "step_11",
        "step_4",
    ]
    assert ft_dist.latest_checkpoint(tmp_path / "missing") is None


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (open, (str(self.target), "w"))


def test_crafted_metadata_does_not_run_code(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ckpt = ft_dist.save_checkpoint(tmp_path, 1, app_state=_state(model, opt, sched, {"step": 1}))
    target = tmp_path / "pwned"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(target)))
    # The same bytes through plain pickle would create the file (the payload is real) ...
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()
    # ... through ft's reader nothing is constructed.
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refuses to load (builtins|io)\.open"):
        ft_dist.load_checkpoint(ckpt, app_state=_state(model, opt, sched, {"step": 0}))
    assert not target.exists()


def test_crafted_value_does_not_run_code(tmp_path: Path) -> None:
    # A non-tensor value is stored by DCP with torch.save; ft loads it with weights_only=True.
    _model, _opt, _sched = _setup()
    target = tmp_path / "pwned"
    ckpt = ft_dist.save_checkpoint(tmp_path, 1, app_state={"extra": {"note": _Payload(target)}})
    assert not target.exists()
    with pytest.raises(CheckpointError, match="step_1"):
        ft_dist.load_checkpoint(ckpt, app_state={"extra": {"note": None}})
    assert not target.exists()


def test_rank_state_must_be_tensors_and_sidecar_is_weights_only(tmp_path: Path) -> None:
    _model, _opt, _sched = _setup()
    with pytest.raises(CheckpointError, match="rank_state\\['seed'\\] is int"):
        ft_dist.save_checkpoint(tmp_path, 1, app_state={"c": {"a": 1}}, rank_state={"seed": 3})  # type: ignore[dict-item]
    ckpt = ft_dist.save_checkpoint(tmp_path, 1, app_state={"c": {"a": 1}}, rank_state={"x": torch.ones(2)})
    torch.save({"x": _Payload(tmp_path / "pwned")}, ckpt / "rank_0.pt")
    with pytest.raises(CheckpointError, match=r"rank_0\.pt: unreadable rank state"):
        ft_dist.read_rank_state(ckpt, 0)
    assert not (tmp_path / "pwned").exists()
    assert ft_dist.read_rank_state(ckpt, 5) is None


def test_missing_or_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ckpt = ft_dist.save_checkpoint(tmp_path, 1, app_state=_state(model, opt, sched, {"step": 1}))
    data = next(ckpt.glob("*.distcp"))
    data.rename(tmp_path / "aside")
    with pytest.raises(CheckpointError, match=r"step_1: loading failed \(FileNotFoundError") as missing:
        ft_dist.load_checkpoint(ckpt, app_state=_state(model, opt, sched, {"step": 0}))
    assert "\n" not in str(missing.value)
    (tmp_path / "aside").rename(data)
    (ckpt / ".metadata").write_bytes((ckpt / ".metadata").read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"\.metadata: not a readable DCP metadata file"):
        ft_dist.load_checkpoint(ckpt, app_state=_state(model, opt, sched, {"step": 0}))


def test_trainable_only_checkpoint_names_a_missing_key(tmp_path: Path) -> None:
    model, _, _ = _setup()
    for p in model.embed.parameters():
        p.requires_grad_(False)
    ckpt = ft_dist.save_checkpoint(
        tmp_path, 1, app_state={"t": ft_dist.ModelOptimizerState(model, trainable_only=True)}
    )
    stored = set(ft_dist.read_metadata(str(ckpt / ".metadata")).state_dict_metadata)
    assert "t.model.embed.weight" not in stored
    assert "t.model.head.weight" in stored
    other, _, _ = _setup(seed=4)  # everything trainable: it needs embed.weight, which was not stored
    with pytest.raises(
        CheckpointError, match=r"Missing key in checkpoint state_dict: t\.model\.embed\.weight"
    ):
        ft_dist.load_checkpoint(
            ckpt, app_state={"t": ft_dist.ModelOptimizerState(other, trainable_only=True)}
        )
