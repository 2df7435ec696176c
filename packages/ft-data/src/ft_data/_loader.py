"""Deterministic, resumable, world-size-independent data loading with sequence packing.

Per epoch, the *global order* of rows is a pure function of (seed, epoch, example lengths): the
examples are shuffled with the loader's own ``torch.Generator`` (seeded from seed and epoch; the
global RNG is never touched) and, when packing, placed best-fit into rows of ``max_seq_len`` tokens
(each example goes into the fullest row it still fits, else opens a new row; rows keep creation
order). Without packing a row is one example.

A global step takes the next ``batch_size * world_size`` rows of that order; rank ``r`` reads the
``r``-th block of ``batch_size`` of them. The loader's position is the number of global rows
consumed in the current epoch (plus the epoch), so a run stopped after k steps resumes with
``load_state_dict`` on any world size and reads exactly the rows an uninterrupted run would. An
epoch ends at the last complete global batch (the tail, fewer than ``batch_size * world_size``
rows, is skipped so that every rank steps together).

:meth:`Loader.batches` is what a training loop reads: this rank's batches from the position on,
across epochs, optionally collated in worker processes. Batch ``k`` of an epoch is a pure function of
(epoch order, ``k``, world size, rank), so workers can build it anywhere; the loader advances its own
position as each batch is handed out, so ``state_dict()`` between optimizer steps is exact however far
the workers read ahead.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.utils.data

from ft_data._collate import collate_preference, collate_rows

__all__ = ["Loader", "pack_rows", "row_order"]


class _EpochBatches(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """This rank's batch ``k`` of one epoch (collated rows), a pure function of (epoch order, k): what
    a ``DataLoader`` worker builds without sharing state with the loader."""

    def __init__(self, loader: Loader, epoch: int) -> None:
        self.loader, self.epoch = loader, epoch
        self.per_step = loader.batch_size * loader.world_size

    def __len__(self) -> int:
        return len(self.loader.rows(self.epoch)) // self.per_step

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.loader.batch(self.loader.rank_rows(self.epoch, k * self.per_step))


class _Examples(Protocol):
    lengths: list[int]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Sequence[int]]: ...


def pack_rows(order: Sequence[int], lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Best-fit packing of examples, taken in `order`, into rows of at most `max_seq_len` tokens.

    Args:
        order: Example indices in the order they are placed.
        lengths: Token count of every example.
        max_seq_len: Row capacity.

    Returns:
        Rows of example indices, in the order the rows were opened.
    """
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for idx in order:
        n = lengths[idx]
        if n > max_seq_len:
            raise ValueError(f"example {idx} has {n} tokens, more than max_seq_len={max_seq_len}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = max_seq_len, len(rows)
            rows.append([])
        rows[row].append(idx)
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return rows


def row_order(
    lengths: Sequence[int], *, seed: int, epoch: int, max_seq_len: int, packed: bool, shuffle: bool
) -> list[list[int]]:
    """The global order of rows of an epoch (a pure function of its arguments)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    n = len(lengths)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    return pack_rows(order, lengths, max_seq_len) if packed else [[i] for i in order]


class Loader:
    """Iterates this rank's batches of a tokenised dataset (``input_ids`` / ``labels`` examples, or
    preference pairs: then a row is one pair, never packed, and a batch is `collate_preference`'s
    ``[2b, s]`` chosen-then-rejected rows plus ``pair_index`` ``[b]``, the pairs' dataset indices).

    Args:
        dataset: Examples with `lengths` (e.g. `TokenizedDataset`).
        batch_size: Rows per rank per step.
        max_seq_len: Row length when packing (rows are padded to it).
        seed: Seed of the shuffle.
        world_size: Number of ranks reading the same global order.
        rank: This rank.
        packed: Pack several examples per row (else one example per row, padded to the longest).
        shuffle: Shuffle examples each epoch.
        pad_id: Id written on padding.
    """

    def __init__(
        self,
        dataset: _Examples,
        *,
        batch_size: int,
        max_seq_len: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        packed: bool = True,
        shuffle: bool = True,
        pad_id: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is outside world_size={world_size}")
        self.preference = len(dataset) > 0 and "chosen_input_ids" in dataset[0]
        if self.preference and packed:
            raise ValueError("preference pairs are not packed: pass packed=False")
        self.dataset, self.batch_size, self.max_seq_len = dataset, batch_size, max_seq_len
        self.seed, self.world_size, self.rank = seed, world_size, rank
        self.packed, self.shuffle, self.pad_id = packed, shuffle, pad_id
        self.epoch = 0
        self.rows_consumed = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def rows(self, epoch: int) -> list[list[int]]:
        """Global row order of `epoch` (example indices per row)."""
        if self._cache is None or self._cache[0] != epoch:
            order = row_order(
                self.dataset.lengths,
                seed=self.seed,
                epoch=epoch,
                max_seq_len=self.max_seq_len,
                packed=self.packed,
                shuffle=self.shuffle,
            )
            self._cache = (epoch, order)
        return self._cache[1]

    def steps_per_epoch(self) -> int:
        """Complete global batches in an epoch."""
        return len(self.rows(self.epoch)) // (self.batch_size * self.world_size)

    def rank_rows(self, epoch: int, rows_consumed: int) -> list[list[int]]:
        """The rows this rank reads at the global step starting after `rows_consumed` rows."""
        start = rows_consumed + self.rank * self.batch_size
        return self.rows(epoch)[start : start + self.batch_size]

    def batch(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """The collated batch of `rows` (example indices per row), as `__iter__` yields it."""
        if self.preference:
            batch = collate_preference([self.dataset[row[0]] for row in rows], pad_id=self.pad_id)
            batch["pair_index"] = torch.tensor([row[0] for row in rows], dtype=torch.long)  # [b]
            return batch
        return collate_rows(
            [[self.dataset[i] for i in row] for row in rows],
            pad_id=self.pad_id,
            length=self.max_seq_len if self.packed else None,
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches until the end of the current epoch; the position advances as each is yielded."""
        step = self.batch_size * self.world_size
        rows = self.rows(self.epoch)
        while self.rows_consumed + step <= len(rows):
            batch = self.batch(self.rank_rows(self.epoch, self.rows_consumed))
            self.rows_consumed += step
            yield batch
        self.epoch += 1
        self.rows_consumed = 0

    def batches(self, num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches from the loader's position on, across epochs, without end.

        Args:
            num_workers: Processes that collate batches ahead (0: in this process). Each epoch's
                ``DataLoader`` gets a generator of its own: one that draws its workers' seed from the
                global RNG would shift every later random draw of a run resumed mid-epoch (its dropout
                masks) against the uninterrupted run.

        Yields:
            Collated batches; ``epoch`` / ``rows_consumed`` advance as each is yielded (to the next
            epoch's start with an epoch's last batch), so they always name the next batch to hand out,
            however many the workers prefetched.

        Raises:
            ValueError: An epoch holds no complete global batch (there would be nothing to yield, ever),
                or the position (a loaded one) is not a whole number of this loader's global batches
                (``batch_size * world_size`` rows): reading from it would shift every later global batch.
        """
        while True:
            epoch = _EpochBatches(self, self.epoch)
            if len(epoch) == 0:
                raise ValueError(
                    f"{len(self.dataset)} examples give no complete batch of {self.batch_size} rows x "
                    f"{self.world_size} ranks"
                )
            if self.rows_consumed % epoch.per_step:
                raise ValueError(
                    f"position {self.rows_consumed} rows into epoch {self.epoch} is not a whole number of "
                    f"global batches of {self.batch_size} rows x {self.world_size} ranks"
                )
            start = self.rows_consumed // epoch.per_step
            if start >= len(epoch):  # a position saved at an epoch's end
                self.epoch, self.rows_consumed = self.epoch + 1, 0
                continue
            data = torch.utils.data.DataLoader(
                epoch,
                batch_size=None,
                sampler=range(start, len(epoch)),
                num_workers=num_workers,
                generator=torch.Generator(),
            )
            for k, batch in enumerate(data, start=start):
                self.rows_consumed += epoch.per_step
                if k == len(epoch) - 1:  # the epoch's last batch: the position moves to the next epoch
                    self.epoch += 1
                    self.rows_consumed = 0
                yield batch

    def state_dict(self) -> dict[str, Any]:
        """Position: epoch and global rows consumed in it (world-size independent), plus the seed."""
        return {"epoch": self.epoch, "rows_consumed": self.rows_consumed, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at a saved position (saved with any world size and batch size); it must be a whole
        number of this loader's global batches (``batch_size * world_size`` rows) for :meth:`batches`
        to continue the same global order from it (checked there)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state has seed {state['seed']}, this loader seed {self.seed}")
        self.epoch = int(state["epoch"])
        self.rows_consumed = int(state["rows_consumed"])
