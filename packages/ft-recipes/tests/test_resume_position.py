"""Which saved data positions a resume at another batch geometry continues from (``_train.check_position``
through ``resume_checkpoint``), on real checkpoints written by ``ft_dist`` in one process.

The checkpoint is saved 8 rows into epoch 0 of a global batch of 4 rows (``batch_size=2`` x 2 ranks):
another geometry with the same global batch, or a global batch the position is a whole number of, goes
on from row 8; one it is not (3 rows; 2 x 3 accumulation = 6 rows) is refused in one line naming the
keys, with nothing pruned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import ft_data
import ft_dist
from ft_recipes import _train
from ft_recipes.errors import CheckpointLoadError


class _Rows:
    """40 one-token examples: row ``i`` is example ``i`` (no packing, no shuffle)."""

    lengths = [1] * 40

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": [index], "labels": [index]}


def _loader(batch_size: int, world_size: int = 1) -> ft_data.Loader:
    return ft_data.Loader(
        _Rows(), batch_size=batch_size, max_seq_len=4, world_size=world_size, packed=False, shuffle=False
    )


def _state(loader: ft_data.Loader, accumulation: int, *, with_batch: bool = True) -> dict[str, Any]:
    counters = {"step": 0, "tokens": 0}
    if with_batch:
        counters[_train.GLOBAL_BATCH] = loader.batch_size * loader.world_size * accumulation
    return {"loader": loader, "counters": counters}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """``tmp_path/checkpoints/step_2``: 8 rows into epoch 0, global batch 4 (2 x 2 ranks), step 2."""
    loader = _loader(2, world_size=2)
    state = _state(loader, 1)
    stream = loader.batches()
    for _ in range(2):
        next(stream)
    state["counters"]["step"] = 2
    torch.manual_seed(11)
    return ft_dist.save_checkpoint(
        tmp_path / "checkpoints", 2, app_state=state, rank_state=ft_dist.rng_state(), keep_last=1
    )


def _first_rows(loader: ft_data.Loader) -> list[int]:
    return next(loader.batches())["input_ids"][:, 0].tolist()


@pytest.mark.parametrize(("batch_size", "accumulation"), [(4, 1), (1, 4), (8, 1), (2, 2)])
def test_whole_positions_continue_from_the_saved_row(
    tmp_path: Path, saved: Path, batch_size: int, accumulation: int
) -> None:
    loader = _loader(batch_size)
    state = _state(loader, accumulation)
    assert _train.resume_checkpoint(str(tmp_path), "auto", state) == saved
    assert (loader.epoch, loader.rows_consumed, state["counters"]["step"]) == (0, 8, 2)
    assert state["counters"][_train.GLOBAL_BATCH] == batch_size * accumulation  # this launch's, saved next
    assert _first_rows(loader) == list(range(8, 8 + batch_size))


@pytest.mark.parametrize(("batch_size", "accumulation", "rows"), [(3, 1, 3), (2, 3, 6), (6, 1, 6)])
def test_a_position_not_whole_in_new_global_batches_is_refused(
    tmp_path: Path, saved: Path, batch_size: int, accumulation: int, rows: int
) -> None:
    before = sorted((p.name, p.read_bytes()) for p in saved.iterdir())
    with pytest.raises(CheckpointLoadError) as refused:
        _train.resume_checkpoint(str(tmp_path), "auto", _state(_loader(batch_size), accumulation))
    message = str(refused.value)
    assert "\n" not in message
    assert (
        f"stopped 8 rows into epoch 0, not a whole number of this launch's global batches of {rows}"
        in message
    )
    assert f"batch_size={batch_size} x 1 ranks x gradient_accumulation_steps={accumulation}" in message
    assert "saved: 4 rows" in message
    assert sorted((p.name, p.read_bytes()) for p in saved.iterdir()) == before  # nothing touched


def test_the_same_global_batch_is_not_checked_against_window_ends(tmp_path: Path) -> None:
    """A window of 4 micro-batches may straddle an epoch's end, leaving a position that is not a whole
    number of windows: with the global batch unchanged it is continued as saved; with another, refused."""
    loader = _loader(1)
    state = _state(loader, 4)
    loader.load_state_dict({"epoch": 1, "rows_consumed": 2, "seed": 0})
    path = ft_dist.save_checkpoint(tmp_path / "checkpoints", 3, app_state=state)
    again = _loader(1)
    assert _train.resume_checkpoint(str(tmp_path), str(path), _state(again, 4)) == path
    assert (again.epoch, again.rows_consumed) == (1, 2)
    with pytest.raises(CheckpointLoadError, match="stopped 2 rows into epoch 1"):  # another global batch
        _train.resume_checkpoint(str(tmp_path), str(path), _state(_loader(1), 2 * 4))


def test_a_checkpoint_without_the_global_batch_loads(tmp_path: Path) -> None:
    """A checkpoint written before the global batch was recorded: taken as the same global batch."""
    old = _state(_loader(2, world_size=2), 1, with_batch=False)
    path = ft_dist.save_checkpoint(tmp_path / "checkpoints", 1, app_state=old)
    state = _state(_loader(4), 1)
    assert _train.resume_checkpoint(str(tmp_path), str(path), state) == path
    assert state["counters"][_train.GLOBAL_BATCH] == 4


def test_a_rank_the_saved_run_lacked_takes_rank_0s_rng(saved: Path) -> None:
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(5)
    state = _train.rank_rng_state(saved)
    assert state is not None
    ft_dist.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)
    assert _train.rank_rng_state(saved.parent / "missing") is None


def test_the_resumed_line_names_the_saved_world_size(saved: Path) -> None:
    assert _train.resumed_line("full", saved, 2, 1) == f"[full] resumed from {saved} at step 2"
    assert _train.resumed_line("full", saved, 2, 4) == (
        f"[full] resumed from {saved} at step 2 (saved on 1 rank, now 4)"
    )
