"""The loop's checkpoint writer in one process: background saves publish only when waited for, keep at
most one save in flight, and hold the state as it was when the save started (like a blocking save)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import ft_dist
from ft_recipes.steps import CheckpointSaver


def _state(model: nn.Module, opt: torch.optim.Optimizer, counters: dict[str, int]) -> dict:
    return {"train": ft_dist.ModelOptimizerState(model, opt), "counters": counters}


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(5, 13)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def _loaded(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    model = nn.Linear(13, 7)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    counters = {"step": -1}
    ft_dist.load_checkpoint(path, app_state=_state(model, opt, counters))
    return {k: v.clone() for k, v in model.state_dict().items()}, counters


def test_async_saver_keeps_one_save_in_flight_and_saves_what_a_blocking_save_saves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(13, 7)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    counters = {"step": 0}
    state = _state(model, opt, counters)
    background = CheckpointSaver(str(tmp_path / "async"), keep_last=5, async_save=True)
    blocking = CheckpointSaver(str(tmp_path / "sync"), keep_last=5)
    root = tmp_path / "async" / "checkpoints"
    expected = []
    for step in (1, 2):
        _train_step(model, opt)
        counters["step"] = step
        expected.append(({k: v.clone() for k, v in model.state_dict().items()}, dict(counters)))
        blocking.save(step, state)
        assert ft_dist.is_checkpoint(tmp_path / "sync" / "checkpoints" / f"step_{step}")  # done at once
        background.save(step, state)
        # Not published before it is waited for (or polled): nothing names step_N yet ...
        assert not (root / f"step_{step}").exists()
        # ... and the previous one was waited for by this save: at most one save in flight.
        assert [ft_dist.is_checkpoint(root / f"step_{s}") for s in range(1, step)] == [True] * (step - 1)
        _train_step(model, opt)  # training goes on while it is written
        counters["step"] = 99
    assert background.wait() == root / "step_2"
    assert background.wait() is None  # nothing in flight any more
    for step, (weights, numbers) in enumerate(expected, start=1):
        for saver_root in (root, tmp_path / "sync" / "checkpoints"):
            got_weights, got_numbers = _loaded(saver_root / f"step_{step}")
            assert got_numbers == numbers
            assert all(torch.equal(got_weights[k], weights[k]) for k in weights)
    # A checkpoint holding the live state instead would differ: the model moved on after each save.
    assert not torch.equal(model.weight, expected[-1][0]["weight"])
