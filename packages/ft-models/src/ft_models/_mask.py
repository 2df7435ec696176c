"""Attention masks for packed rows, padding and KV caches (block-causal masking).

A row of a batch may hold several packed documents (``document_ids`` ``[b, s]``, one id per token) and
padding (``document_ids == -1``). A query may attend to a key when

* the key is not later than the query (causality by *slot*, the index inside the row or the cache),
* both belong to the same document (block-causal: packed documents never see each other),
* the key is valid (not padding, and, with a cache, written and not a pad slot),
* and, for a sliding-window layer, the key is less than ``window`` slots behind the query.

An :class:`AttentionMask` is built once per forward, before the layers run, and is never changed by
them (a layer that wrote into it would be a side effect that a compiled, activation-checkpointed block
cannot contain). It attends in one of three ways (:meth:`AttentionMask.attend`):

* *causal*: one document per row, no padding, no cache: the kernel's no-mask causal path; a sliding
  window shorter than the row is applied in blocks (:func:`~._segments.attend_causal`), never as an
  ``s x s`` mask;
* *segments*: packed or padded rows without a cache: every document is attended on its own
  (:mod:`._segments`), no ``s x s`` mask either; padding attends to nothing and its output is zero;
* *dense*: a cache, or a document id that occurs in two separate runs of a row: a boolean
  ``[b or 1, 1, s, t]`` mask, built for every window the model uses when the mask is made
  (:meth:`prepare`). A pad query is allowed to attend to exactly one key, itself (a softmax over an
  all-masked row is NaN); its output is finite and meaningless, never read by a real token (no real
  query may attend to a pad key), and ignored by the loss (its label is ignored by the batch contract).

With a cache, keys are cache slots ``[0, t)`` and the ``s`` new queries occupy slots ``[t - s, t)``; key
validity comes from the cache's per-row key-valid mask. A cached row holds one document (generation).

Shape legend: b batch, s queries, t keys, n_h query heads, n_kv key/value heads, h_d head dim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ._segment_op import attend_segments
from ._segments import DocumentSegments, attend_causal

if TYPE_CHECKING:
    from ._attention import AttentionKernel

__all__ = ["AttentionMask"]


@dataclass(frozen=True)
class AttentionMask:
    """How the layers of one forward attend: built before the layers run, read-only for them.

    Layers call :meth:`attend` with their kernel and window, so one object serves layers with and
    without windows.

    Attributes:
        num_queries: ``s``.
        num_keys: ``t`` (``s`` without a cache).
        q_doc: Document id per query ``[b, s]`` (-1 = padding) or ``None`` (one document, no padding).
        k_doc: Document id per key ``[b, t]`` (-1 = invalid) or ``None`` (keys are the queries).
        device: Where to build the mask.
        prepared: Dense masks already built, by window (:meth:`prepare`).
        segments: The documents' layout when rows are attended per document (no cache).
    """

    num_queries: int
    num_keys: int
    q_doc: torch.Tensor | None
    k_doc: torch.Tensor | None
    device: torch.device
    prepared: Mapping[int | None, torch.Tensor] = field(default_factory=dict, repr=False)
    segments: DocumentSegments | None = field(default=None, repr=False)

    @classmethod
    def for_sequence(
        cls, seq_len: int, document_ids: torch.Tensor | None, device: torch.device
    ) -> AttentionMask:
        """Dense-mask ingredients for a cache-free forward over ``seq_len`` tokens.

        Its layers attend through dense masks (built per call unless :meth:`prepare` built them);
        :meth:`for_documents` is what the decoder uses, and falls back to this.

        Args:
            seq_len: ``s``.
            document_ids: ``[b, s]`` document ids (-1 = padding) or ``None``.
            device: Device of the activations.
        """
        return cls(seq_len, seq_len, document_ids, document_ids, device)

    @classmethod
    def for_documents(
        cls,
        seq_len: int,
        document_ids: torch.Tensor | None,
        device: torch.device,
        *,
        windows: Iterable[int | None] = (None,),
        segments: DocumentSegments | None = None,
    ) -> AttentionMask:
        """The mask of a cache-free forward, chosen from the batch's layout (once per forward).

        One document per row without padding is the plain causal mask; contiguous documents (packing's
        layout) and padding are attended per document; anything else gets dense masks for ``windows``.

        Args:
            seq_len: ``s``.
            document_ids: ``[b, s]`` document ids (-1 = padding) or ``None`` (one document per row).
            device: Device of the activations.
            windows: Every window size the model's layers use (``None``: full attention); only the
                dense fallback needs them.
            segments: The layout of ``document_ids`` computed by the caller, e.g. from the CPU copy of
                the batch; computed here (one copy of ``document_ids`` to the host) when ``None``.

        Raises:
            ValueError: ``segments`` of another batch shape.
        """
        s = seq_len
        if document_ids is None or s == 0:
            return cls(s, s, None, None, device)
        if segments is not None and (segments.batch, segments.seq_len) != tuple(document_ids.shape):
            raise ValueError(
                f"segments describe a [{segments.batch}, {segments.seq_len}] batch, document_ids are "
                f"{list(document_ids.shape)}"
            )
        layout = (
            segments if segments is not None else DocumentSegments.from_document_ids(document_ids, device)
        )
        if layout.one_document:
            return cls(s, s, None, None, device)
        if layout.contiguous:
            return cls(s, s, document_ids, document_ids, device, segments=layout)
        return cls.for_sequence(s, document_ids, device).prepare(windows)

    @classmethod
    def for_cache(cls, new_valid: torch.Tensor, key_valid: torch.Tensor) -> AttentionMask:
        """Mask for ``s`` new tokens appended to a cache holding ``t - s`` earlier slots.

        Args:
            new_valid: ``[b, s]`` bool, False where a new token is padding.
            key_valid: ``[b, t]`` bool, the cache's key-valid mask including the new tokens.
        """
        q_doc = torch.where(new_valid, 0, -1)  # [b, s]
        k_doc = torch.where(key_valid, 0, -1)  # [b, t]
        return cls(new_valid.shape[1], key_valid.shape[1], q_doc, k_doc, key_valid.device)

    @classmethod
    def for_decode_step(
        cls, key_valid: torch.Tensor, slot: torch.Tensor, windows: Iterable[int | None]
    ) -> AttentionMask:
        """Mask for one new token per row written at cache ``slot`` of a ``t``-slot buffer.

        The static decode step attends over the whole buffer, so its shapes never change: a key is
        visible when it is valid and not later than ``slot`` (and, for a window, less than ``window``
        slots behind it). The query's slot is a tensor, not a Python int, so a compiled step is not
        specialised to it. The masks of all ``windows`` are built here, once per step.

        Args:
            key_valid: ``[b, t]`` bool, the cache's key-valid mask including the new token.
            slot: 1-element long tensor, the new token's slot.
            windows: Every window size the model's layers use (``None``: full attention).
        """
        t = key_valid.shape[1]
        k_slot = torch.arange(t, device=key_valid.device)  # [t]
        seen = key_valid & (k_slot <= slot)  # [b, t]
        dense = {
            w: (seen if w is None else seen & (slot - k_slot < w))[:, None, None, :]  # [b, 1, 1, t]
            for w in windows
        }
        return cls(1, t, None, None, key_valid.device, dense)

    def is_plain_causal(self, window: int | None = None) -> bool:
        """True when the mask is the standard causal one (no documents, padding, cache or window)."""
        return self.q_doc is None and self.num_keys == self.num_queries and window is None

    def prepare(self, windows: Iterable[int | None]) -> AttentionMask:
        """A copy with the dense masks of ``windows`` built (before the layers run, once per forward)."""
        built = {**self.prepared, **{w: self._build(w) for w in windows if w not in self.prepared}}
        return dataclasses.replace(self, prepared=built)

    def dense(self, window: int | None = None) -> torch.Tensor:
        """Boolean mask ``[b or 1, 1, s, t]``; True where the query may attend to the key.

        The prepared mask when there is one; otherwise built now and not kept (nothing is written).

        Args:
            window: Sliding-window size in slots (key allowed when ``q_slot - k_slot < window``) or
                ``None`` for full causal attention.
        """
        if window in self.prepared:
            return self.prepared[window]
        return self._build(window)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kernel: AttentionKernel,
        window: int | None,
        scale: float,
    ) -> torch.Tensor:
        """Attention of one layer under this mask (see the module docstring for the three ways).

        Args:
            q: ``[b, n_h, s, h_d]``.
            k: ``[b, n_kv, t, h_d]`` (the cache's keys when there is one).
            v: ``[b, n_kv, t, h_d]``.
            kernel: The layer's kernel.
            window: The layer's sliding window, ``None`` for full attention.
            scale: Dot-product scale.

        Returns:
            ``[b, n_h, s, h_d]``.
        """
        if window in self.prepared or self.num_queries != self.num_keys:
            return kernel(q, k, v, self.dense(window), scale)
        if self.segments is not None:
            return attend_segments(q, k, v, self.segments, kernel, window, scale)
        if self.q_doc is None:
            return attend_causal(q, k, v, kernel, window, scale)
        return kernel(q, k, v, self.dense(window), scale)

    def _build(self, window: int | None) -> torch.Tensor:
        s, t = self.num_queries, self.num_keys
        q_slot = torch.arange(t - s, t, device=self.device)[:, None]  # [s, 1]
        k_slot = torch.arange(t, device=self.device)[None, :]  # [1, t]
        allowed = k_slot <= q_slot  # [s, t]
        if window is not None:
            allowed = allowed & (q_slot - k_slot < window)
        if self.q_doc is None or self.k_doc is None:
            return allowed[None, None]  # [1, 1, s, t]
        q_doc = self.q_doc[:, :, None]  # [b, s, 1]
        k_doc = self.k_doc[:, None, :]  # [b, 1, t]
        allowed = allowed[None] & (q_doc == k_doc) & (k_doc >= 0)  # [b, s, t]
        is_self = (k_slot == q_slot)[None]  # [1, s, t]
        allowed = torch.where(q_doc < 0, is_self, allowed)  # a pad query sees only itself
        return allowed[:, None]  # [b, 1, s, t]
