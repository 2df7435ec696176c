"""Attention over packed rows without an ``s x s`` mask: every document is attended on its own.

A packed row holds several documents, each a contiguous run of tokens, and padding. Block-causal
attention over the row is exactly causal attention inside each document, so instead of one call over
the whole row under a dense ``[b, 1, s, s]`` mask (which SDPA turns into a dense bias per layer, kept
for the backward, and whose masked half is still computed), each document is handed to the layer's
kernel as its own sequence on the kernel's no-mask causal path. Documents of equal length, from any
row, are stacked into one call. Padding attends to nothing: its output is zero (its labels are
ignored by the batch contract, and no real token attends to it, so nothing reads it).

The layout is computed once per forward, on the CPU, by :meth:`DocumentSegments.from_document_ids`:
one gather order that puts every document's tokens next to the others of its length (pads last) and
its inverse, moved to the device once. Each layer then gathers ``q``/``k``/``v`` once, runs one kernel
call per distinct length, and scatters the outputs back with the inverse order: memory linear in
``s``, work proportional to the sum of squared document lengths, no host synchronisation per layer.

A sliding window shorter than a document is applied inside it without an ``L x L`` mask:
:func:`attend_causal` cuts the document into blocks of ``w`` queries; block ``j > 0`` attends to the
``2w`` keys of blocks ``j - 1`` and ``j`` under one constant ``[w, 2w]`` band mask (shared by every
block), block 0 on the causal path. The document is padded at its end to a whole number of blocks;
causality keeps the padding out of every real query's view.

Shape legend: b batch, s row length, n documents of one length, L their length, w window, nb blocks
per document, n_h query heads, n_kv key/value heads, h_d head dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ._attention import AttentionKernel

__all__ = ["DocumentSegments", "attend_causal", "attend_groups"]


@dataclass(frozen=True, eq=False)
class DocumentSegments:
    """Where each document of a batch lies, grouped by length (computed once per forward, on the CPU).

    Attributes:
        batch: ``b``.
        seq_len: ``s``.
        one_document: Every row is one document without padding (plain causal attention).
        contiguous: Every document is one run of tokens, as packing lays them out. A document id that
            occurs in two runs of a row is attended through the dense mask instead.
        groups: ``(L, n)`` per distinct document length, ascending: ``n`` documents of ``L`` tokens.
        counts_by_length: CPU long ``[s + 1]``, documents per length: the same table as ``groups``
            with a shape fixed by ``s``, which the compiled path reads (see ``_segment_op``).
        order: ``[b * s]`` long on the device: flat token indices (``row * s + slot``), documents of
            ``groups[0]`` first (each in token order, one after another), then the next length, pads last.
        inverse: ``[b * s]`` long on the device: where each flat token sits in ``order``.
    """

    batch: int
    seq_len: int
    one_document: bool
    contiguous: bool
    groups: tuple[tuple[int, int], ...]
    counts_by_length: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor

    @classmethod
    def from_document_ids(
        cls, document_ids: torch.Tensor, device: torch.device | str | None = None
    ) -> DocumentSegments:
        """The layout of a batch's documents.

        Call it on the CPU copy of the batch where there is one (the collator's tensors before they
        move): on an accelerator tensor it copies ``document_ids`` to the host once.

        Args:
            document_ids: ``[b, s]`` document id per token, ``-1`` for padding.
            device: Where the gather indices go (the activations' device); ``document_ids``' by default.
        """
        device = torch.device(device) if device is not None else document_ids.device
        docs = document_ids.detach()
        if docs.device.type != "cpu":
            docs = docs.cpu()  # the one host copy: callers with a CPU batch pass that instead
        docs = docs.long()  # [b, s]
        b, s = docs.shape
        flat = docs.reshape(-1)  # [b * s]
        is_start = torch.ones(b, s, dtype=torch.bool)
        is_start[:, 1:] = docs[:, 1:] != docs[:, :-1]
        starts = is_start.reshape(-1).nonzero().squeeze(1)  # [runs] flat index of each run's first token
        ends = torch.cat([starts[1:], torch.tensor([b * s])])
        ids, lengths = flat[starts], ends - starts  # [runs]
        real = ids >= 0
        one_document = bool(real.all()) and len(starts) == b
        run_rows = starts // max(s, 1)
        keys = torch.stack([run_rows[real], ids[real]], 1)  # [documents, 2]
        contiguous = len(torch.unique(keys, dim=0)) == len(keys)
        starts, lengths = starts[real], lengths[real]
        by_length = torch.sort(lengths, stable=True)
        starts, lengths = starts[by_length.indices], by_length.values
        # Token k of the sorted documents is document j's token (k - offset_j): start_j + k - offset_j.
        offsets = torch.cumsum(lengths, 0) - lengths  # [documents]
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
        order = torch.cat(
            [torch.repeat_interleave(starts, lengths) + within, (flat < 0).nonzero().squeeze(1)]
        )
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        counts = torch.bincount(lengths, minlength=s + 1)  # [s + 1]
        groups = tuple(
            (int(n), int(c)) for n, c in zip(counts.nonzero().squeeze(1), counts[counts > 0], strict=True)
        )
        return cls(
            b,
            s,
            one_document,
            contiguous,
            groups,
            counts,
            order.to(device, non_blocking=True),
            inverse.to(device, non_blocking=True),
        )


def _band(w: int, device: torch.device) -> torch.Tensor:
    """``[1, 1, w, 2w]`` bool: query ``a`` of a block sees key ``c`` of the two-block span when ``a < c <= a + w``.

    Keys ``c`` are slots ``(j - 1) * w + c`` and query ``a`` is slot ``j * w + a``: ``c <= a + w`` is
    causality, ``c > a`` keeps the key less than ``w`` slots behind (every row sees exactly ``w`` keys).
    """
    a = torch.arange(w, device=device)[:, None]
    c = torch.arange(2 * w, device=device)[None, :]
    return ((c > a) & (c <= a + w))[None, None]


def attend_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel: AttentionKernel,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Causal attention of ``n`` independent sequences of ``L`` tokens, with an optional sliding window.

    Args:
        q: ``[n, n_h, L, h_d]``.
        k: ``[n, n_kv, L, h_d]``.
        v: ``[n, n_kv, L, h_d]``.
        kernel: The layer's kernel, called on its causal path (mask ``None``) or with the band mask.
        window: Keys less than ``window`` slots behind a query are visible; ``None``: all earlier keys.
        scale: Dot-product scale.

    Returns:
        ``[n, n_h, L, h_d]``.
    """
    n, n_h, length, h_d = q.shape
    if window is None or length <= window:
        return kernel(q, k, v, None, scale)
    w = window
    nb = -(-length // w)
    pad = (0, 0, 0, nb * w - length)
    q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)  # [n, n, nb * w, h_d]
    first = kernel(q[:, :, :w], k[:, :, :w], v[:, :, :w], None, scale)  # [n, n_h, w, h_d]
    n_kv = k.shape[1]
    qb = q[:, :, w:].reshape(n, n_h, nb - 1, w, h_d).transpose(1, 2).reshape(-1, n_h, w, h_d)
    kb = (
        k.unfold(2, 2 * w, w).permute(0, 2, 1, 4, 3).reshape(-1, n_kv, 2 * w, h_d)
    )  # [n * (nb-1), n_kv, 2w, h_d]
    vb = v.unfold(2, 2 * w, w).permute(0, 2, 1, 4, 3).reshape(-1, n_kv, 2 * w, h_d)
    rest = kernel(qb, kb, vb, _band(w, q.device), scale)  # [n * (nb-1), n_h, w, h_d]
    rest = rest.reshape(n, nb - 1, n_h, w, h_d).transpose(1, 2).reshape(n, n_h, (nb - 1) * w, h_d)
    return torch.cat([first, rest], dim=2)[:, :, :length]


def attend_groups(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    groups: Sequence[tuple[int, int]],
    kernel: AttentionKernel,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Block-causal attention of packed rows, one kernel call per distinct document length.

    Args:
        q: ``[b, n_h, s, h_d]``.
        k: ``[b, n_kv, s, h_d]``.
        v: ``[b, n_kv, s, h_d]``.
        order: ``[b * s]`` gather order (:class:`DocumentSegments`).
        inverse: ``[b * s]`` its inverse.
        groups: ``(L, n)`` per length, in ``order``'s order.
        kernel: The layer's kernel.
        window: Sliding window or ``None``.
        scale: Dot-product scale.

    Returns:
        ``[b, n_h, s, h_d]``; zero at padding.
    """
    b, n_h, s, h_d = q.shape
    n_kv = k.shape[1]
    qo = q.transpose(1, 2).reshape(b * s, n_h, h_d)[order]  # [b * s, n_h, h_d], grouped by length
    ko = k.transpose(1, 2).reshape(b * s, n_kv, h_d)[order]
    vo = v.transpose(1, 2).reshape(b * s, n_kv, h_d)[order]
    outs, at = [], 0
    for length, count in groups:
        span = slice(at, at + length * count)
        qg = qo[span].view(count, length, n_h, h_d).transpose(1, 2)  # [n, n_h, L, h_d]
        kg = ko[span].view(count, length, n_kv, h_d).transpose(1, 2)  # [n, n_kv, L, h_d]
        vg = vo[span].view(count, length, n_kv, h_d).transpose(1, 2)
        out = attend_causal(qg, kg, vg, kernel, window, scale)  # [n, n_h, L, h_d]
        outs.append(out.transpose(1, 2).reshape(length * count, n_h, h_d))
        at += length * count
    outs.append(qo.new_zeros(b * s - at, n_h, h_d))  # padding
    out = torch.cat(outs)[inverse]  # [b * s, n_h, h_d], back in row order
    return out.view(b, s, n_h, h_d).transpose(1, 2)
