"""Packing, collate and the loader: determinism, per-document positions, resume on another world size."""

from __future__ import annotations

import random

import pytest
import torch

import ft_data


class Examples:
    """A plain list of examples with random lengths (the loader only needs `lengths` and indexing)."""

    def __init__(self, n: int, seed: int = 0, longest: int = 40) -> None:
        rng = random.Random(seed)
        self.items = []
        for i in range(n):
            ids = [1000 + i] * rng.randint(2, longest)  # every token names its example
            self.items.append({"input_ids": ids, "labels": [*ids[1:], -100]})
        self.lengths = [len(x["input_ids"]) for x in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def test_pack_rows_places_every_example_once() -> None:
    data = Examples(300)
    rows = ft_data.pack_rows(range(300), data.lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(data.lengths[i] for i in row) <= 64 for row in rows)
    # best fit wastes less than one example per row: fewer rows than one example each
    assert len(rows) < 300 / 2
    with pytest.raises(ValueError, match="more than max_seq_len=10"):
        ft_data.pack_rows([0], [11], 10)


def test_order_is_a_pure_function_of_seed_epoch_lengths() -> None:
    lengths = Examples(200).lengths
    kw = dict(max_seq_len=64, packed=True, shuffle=True)
    first = ft_data.row_order(lengths, seed=3, epoch=1, **kw)
    state = torch.get_rng_state()
    torch.manual_seed(12345)  # the global generator plays no part
    assert ft_data.row_order(lengths, seed=3, epoch=1, **kw) == first
    torch.manual_seed(0)
    assert ft_data.row_order(lengths, seed=3, epoch=1, **kw) == first
    torch.set_rng_state(state)
    assert ft_data.row_order(lengths, seed=3, epoch=2, **kw) != first
    assert ft_data.row_order(lengths, seed=4, epoch=1, **kw) != first
    before = torch.get_rng_state()
    list(ft_data.Loader(Examples(50), batch_size=2, max_seq_len=64))
    assert torch.equal(torch.get_rng_state(), before)


def test_collate_packed_rows() -> None:
    docs = [
        {"input_ids": [5, 6, 7], "labels": [6, 7, -100]},
        {"input_ids": [8, 9], "labels": [9, -100]},
        {"input_ids": [4], "labels": [-100]},
    ]
    batch = ft_data.collate_rows([[docs[0], docs[1]], [docs[2]]], pad_id=0, length=6)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [4, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, -100, 9, -100, -100], [-100] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 0, 0, 0, 0]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, -1, -1, -1, -1, -1]]
    gen = ft_data.collate_generation([[5, 6, 7], [8]], pad_id=2)
    assert gen["input_ids"].tolist() == [[5, 6, 7], [2, 2, 8]]
    assert gen["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert gen["document_ids"].tolist() == [[0, 0, 0], [-1, -1, 0]]


def _rows_of(batch: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Each row's tokens without padding (unpacked batches pad to their own longest row)."""
    return [tuple(ids[doc != -1].tolist()) for ids, doc in zip(batch["input_ids"], batch["document_ids"])]


def _global_rows(
    data: Examples, world: int, batch_size: int, state=None, steps=None, **kw
) -> tuple[list, dict]:
    """Rows of every rank, step by step in rank order; the state after `steps` global steps."""
    loaders = [
        ft_data.Loader(data, batch_size=batch_size, world_size=world, rank=r, **kw) for r in range(world)
    ]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    rows: list = []
    iters = [iter(loader) for loader in loaders]
    step = 0
    while steps is None or step < steps:
        batches = [next(it, None) for it in iters]
        if batches[0] is None:
            assert all(b is None for b in batches)  # every rank ends the epoch at the same step
            break
        rows += [row for b in batches for row in _rows_of(b)]
        step += 1
    return rows, loaders[0].state_dict()


@pytest.mark.parametrize("packed", [True, False])
def test_resume_on_same_and_other_world_size(packed: bool) -> None:
    data = Examples(240, seed=1)
    kw = dict(max_seq_len=64, seed=7, packed=packed)
    full, _ = _global_rows(data, world=1, batch_size=1, **kw)
    assert len(set(full)) > 20
    k = 3
    head, state = _global_rows(data, world=2, batch_size=3, steps=k, **kw)
    assert state["rows_consumed"] == k * 2 * 3
    assert head == full[: len(head)]
    for world, batch_size in ((2, 3), (3, 2), (1, 4)):
        tail, _ = _global_rows(data, world=world, batch_size=batch_size, state=state, **kw)
        assert tail, (world, batch_size)
        assert tail == full[len(head) : len(head) + len(tail)], (world, batch_size)
        assert len(full) - len(head) - len(tail) < world * batch_size  # only the incomplete tail is skipped
    # Wrong variant: resuming from a step count (k steps of the new global batch) skips or repeats rows.
    wrong = {**state, "rows_consumed": k * 3 * 2 * 2}
    tail, _ = _global_rows(data, world=3, batch_size=2, state=wrong, **kw)
    assert tail != full[len(head) : len(head) + len(tail)]


def test_epochs_advance_and_reshuffle() -> None:
    data = Examples(60)
    loader = ft_data.Loader(data, batch_size=4, max_seq_len=64, seed=1)
    first = [row for b in loader for row in _rows_of(b)]
    assert loader.state_dict() == {"epoch": 1, "rows_consumed": 0, "seed": 1}
    second = [row for b in loader for row in _rows_of(b)]
    assert sorted(first) != sorted(second) or first != second
    assert first != second


def test_packed_batches_carry_each_document_alone() -> None:
    data = Examples(100, seed=2)
    loader = ft_data.Loader(data, batch_size=4, max_seq_len=64, seed=0)
    seen = 0
    for batch in loader:
        ids, labels, pos, doc = (batch[k] for k in ("input_ids", "labels", "position_ids", "document_ids"))
        assert ids.shape == (4, 64)
        for r in range(4):
            for d in doc[r].unique().tolist():
                where = doc[r] == d
                if d == -1:
                    assert (labels[r][where] == -100).all()
                    continue
                tokens = ids[r][where]
                assert tokens.unique().numel() == 1  # one example per document id
                n = int(where.sum())
                assert pos[r][where].tolist() == list(range(n))
                assert labels[r][where].tolist() == [*tokens[1:].tolist(), -100]
                seen += 1
    assert seen > 50


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_cross_epochs_and_resume_at_the_position_handed_out(num_workers: int) -> None:
    """`batches()` reads what one `for batch in loader` per epoch reads, across epochs; the position it
    leaves names the next batch handed out, however far the workers read ahead, on any world size."""
    data = Examples(50, seed=3)
    kw = dict(batch_size=3, max_seq_len=64, seed=5)
    plain = ft_data.Loader(data, **kw)
    want = [_rows_of(b) for _ in range(3) for b in plain]  # three epochs, one `for` each
    loader = ft_data.Loader(data, **kw)
    stream = loader.batches(num_workers)
    got = [_rows_of(next(stream)) for _ in range(len(want))]
    assert got == want
    assert loader.state_dict() == {"epoch": 3, "rows_consumed": 0, "seed": 5}
    # Stop after k batches of an epoch (workers have prefetched more), resume on two ranks.
    loader = ft_data.Loader(data, **kw)
    stream = loader.batches(num_workers)
    k = 4
    head = [_rows_of(next(stream)) for _ in range(k)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "rows_consumed": k * 3, "seed": 5}
    del stream
    ranks = [ft_data.Loader(data, world_size=2, rank=r, batch_size=3, max_seq_len=64, seed=5) for r in (0, 1)]
    for r in ranks:
        r.load_state_dict(state)
    streams = [r.batches(num_workers) for r in ranks]
    tail = [row for _ in range(2) for s in streams for row in _rows_of(next(s))]
    flat = [row for b in want for row in b]
    assert [row for b in head for row in b] + tail == flat[: k * 3 + 12]
    # Wrong variant: a position counted in batches of this rank (k) instead of global rows is not a
    # whole number of global batches: refused rather than read from the middle of a batch.
    wrong = ft_data.Loader(data, **kw)
    wrong.load_state_dict({**state, "rows_consumed": k})
    with pytest.raises(
        ValueError, match="position 4 rows into epoch 0 is not a whole number of global batches"
    ):
        next(wrong.batches())
    # A whole but wrong position (one batch in instead of k) reads other rows.
    wrong.load_state_dict({**state, "rows_consumed": 3})
    assert _rows_of(next(wrong.batches())) != want[k]


def test_batches_refuse_an_epoch_without_a_complete_batch() -> None:
    loader = ft_data.Loader(Examples(3), batch_size=2, max_seq_len=64, world_size=2, rank=0, packed=False)
    with pytest.raises(ValueError, match="3 examples give no complete batch of 2 rows x 2 ranks"):
        next(loader.batches())


def test_batches_resume_from_a_position_at_an_epochs_end() -> None:
    data = Examples(30, seed=4)
    loader = ft_data.Loader(data, batch_size=4, max_seq_len=64, seed=2)
    end = len(loader.rows(0)) // 4 * 4
    loader.load_state_dict({"epoch": 0, "rows_consumed": end, "seed": 2})
    first = next(loader.batches())
    fresh = ft_data.Loader(data, batch_size=4, max_seq_len=64, seed=2)
    fresh.load_state_dict({"epoch": 1, "rows_consumed": 0, "seed": 2})
    assert _rows_of(first) == _rows_of(next(iter(fresh)))
