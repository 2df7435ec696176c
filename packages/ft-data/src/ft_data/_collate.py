"""Batches in ft's contract: ``input_ids``, ``labels``, ``position_ids``, ``document_ids`` ``[b, s]``.

A row holds one or more documents (examples) back to back. ``position_ids`` restart at 0 for each
document, so a packed document sees the same positions as alone; ``document_ids`` number the
documents of a row from 0 and are -1 on padding, from which the model builds its block-causal mask.
Labels arrive already shifted per example (see `labels_from_mask`), so packing never lets a
document's last token predict the next document, and padding is labelled -100.

Training batches are right-padded; generation prompts are left-padded so every row's last prompt
token sits in the last column (positions still start at 0 at each row's first real token).

Shape legend: b rows, s tokens per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ft_data._labels import IGNORE_INDEX

__all__ = ["collate_generation", "collate_preference", "collate_rows"]


def collate_rows(
    rows: Sequence[Sequence[Mapping[str, Sequence[int]]]],
    *,
    pad_id: int = 0,
    length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded training batch from rows of examples (``input_ids`` and ``labels`` each).

    Args:
        rows: ``b`` rows, each a list of examples packed in order (one example when not packing).
        pad_id: Id written on padding (never attended to nor trained on, so any valid id works).
        length: Row length ``s`` (``max_seq_len`` for packed rows); default the longest row.

    Returns:
        ``input_ids``, ``labels``, ``position_ids``, ``document_ids``, each ``[b, s]`` int64.
    """
    sizes = [sum(len(doc["input_ids"]) for doc in row) for row in rows]
    s = max(sizes, default=0) if length is None else length
    if any(n > s for n in sizes):
        raise ValueError(f"a row holds {max(sizes)} tokens, more than the row length {s}")
    b = len(rows)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)  # [b, s]
    labels = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)  # [b, s]
    position_ids = torch.zeros((b, s), dtype=torch.long)  # [b, s]
    document_ids = torch.full((b, s), -1, dtype=torch.long)  # [b, s]
    for r, row in enumerate(rows):
        pos = 0
        for d, doc in enumerate(row):
            n = len(doc["input_ids"])
            if len(doc["labels"]) != n:
                raise ValueError(f"row {r} document {d}: {n} input_ids but {len(doc['labels'])} labels")
            input_ids[r, pos : pos + n] = torch.as_tensor(doc["input_ids"], dtype=torch.long)
            labels[r, pos : pos + n] = torch.as_tensor(doc["labels"], dtype=torch.long)
            position_ids[r, pos : pos + n] = torch.arange(n)
            document_ids[r, pos : pos + n] = d
            pos += n
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "document_ids": document_ids,
    }


def collate_generation(prompts: Sequence[Sequence[int]], *, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts for generation.

    Args:
        prompts: ``b`` prompts of token ids.
        pad_id: Id written on padding.

    Returns:
        ``input_ids``, ``position_ids`` (0 at each row's first real token) and ``document_ids``
        (0 on tokens, -1 on padding), each ``[b, s]`` with ``s`` the longest prompt.
    """
    s = max((len(p) for p in prompts), default=0)
    b = len(prompts)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)  # [b, s]
    position_ids = torch.zeros((b, s), dtype=torch.long)  # [b, s]
    document_ids = torch.full((b, s), -1, dtype=torch.long)  # [b, s]
    for r, prompt in enumerate(prompts):
        n = len(prompt)
        if n:
            input_ids[r, s - n :] = torch.as_tensor(prompt, dtype=torch.long)
            position_ids[r, s - n :] = torch.arange(n)
            document_ids[r, s - n :] = 0
    return {"input_ids": input_ids, "position_ids": position_ids, "document_ids": document_ids}


def collate_preference(
    examples: Sequence[Mapping[str, Sequence[int]]], *, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Preference batch: rows ``0..n-1`` are the chosen answers, rows ``n..2n-1`` the rejected ones.

    Args:
        examples: ``n`` examples with ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``
            and ``rejected_labels`` (as `build_dataset(kind="preference")` makes them).
        pad_id: Id written on padding.

    Returns:
        The four batch tensors, each ``[2n, s]``, right-padded to the longest of all ``2n`` rows.
    """
    rows = [
        [{"input_ids": ex[f"{side}_input_ids"], "labels": ex[f"{side}_labels"]}]
        for side in ("chosen", "rejected")
        for ex in examples
    ]
    return collate_rows(rows, pad_id=pad_id)
