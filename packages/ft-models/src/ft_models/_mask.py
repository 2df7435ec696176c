"""Attention masks for packed rows, padding and KV caches (block-causal masking).

A row of a batch may hold several packed documents (``document_ids`` ``[b, s]``, one id per token) and
padding (``document_ids == -1``). A query may attend to a key when

* the key is not later than the query (causality by *slot*, the index inside the row or the cache),
* both belong to the same document (block-causal: packed documents never see each other),
* the key is valid (not padding, and, with a cache, written and not a pad slot),
* and, for a sliding-window layer, the key is less than ``window`` slots behind the query.

Padding attends to nothing and nothing attends to it. A softmax over an all-masked row is NaN, so a pad
query is allowed to attend to exactly one key: itself. Its output is finite, meaningless, never read by
a real token (no real query may attend to a pad key) and must be ignored by the loss (its label is
ignored by the batch contract). This keeps every kernel NaN-free without post-processing.

With a cache, keys are cache slots ``[0, t)`` and the ``s`` new queries occupy slots ``[t - s, t)``; key
validity comes from the cache's per-row key-valid mask. A cached row holds one document (generation).

Shape legend: b batch, s queries, t keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["AttentionMask"]


@dataclass
class AttentionMask:
    """The ingredients of a mask; :meth:`dense` materialises it per window size, lazily.

    Layers call :meth:`is_plain_causal` to take a kernel's no-mask fast path, otherwise
    :meth:`dense` with their own window, so one object serves layers with and without windows.

    Attributes:
        num_queries: ``s``.
        num_keys: ``t`` (``s`` without a cache).
        q_doc: Document id per query ``[b, s]`` (-1 = padding) or ``None`` (one document, no padding).
        k_doc: Document id per key ``[b, t]`` (-1 = invalid) or ``None`` (keys are the queries).
        device: Where to build the mask.
    """

    num_queries: int
    num_keys: int
    q_doc: torch.Tensor | None
    k_doc: torch.Tensor | None
    device: torch.device
    _dense: dict[int | None, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def for_sequence(
        cls, seq_len: int, document_ids: torch.Tensor | None, device: torch.device
    ) -> AttentionMask:
        """Mask for a cache-free forward over ``seq_len`` tokens.

        Args:
            seq_len: ``s``.
            document_ids: ``[b, s]`` document ids (-1 = padding) or ``None``.
            device: Device of the activations.
        """
        return cls(seq_len, seq_len, document_ids, document_ids, device)

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

    def dense(self, window: int | None = None) -> torch.Tensor:
        """Boolean mask ``[b or 1, 1, s, t]``; True where the query may attend to the key.

        Args:
            window: Sliding-window size in slots (key allowed when ``q_slot - k_slot < window``) or
                ``None`` for full causal attention.
        """
        if window not in self._dense:
            self._dense[window] = self._build(window)
        return self._dense[window]

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
