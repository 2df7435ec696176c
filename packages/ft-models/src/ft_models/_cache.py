"""Preallocated key/value cache owned by the caller (incremental decoding).

The model holds no cache state: :meth:`CausalLM.new_cache` returns a :class:`KVCache` that the caller
passes as ``cache=`` to every forward. Buffers are ``[b, n_kv, capacity, h_d]`` per layer, sized by the
caller from prompt + new tokens (never from the model's maximum context). All rows write the same slot
range, so a left-padded batch keeps its pads in slots marked invalid in the per-row key-valid mask
``valid`` ``[b, capacity]``; each row also keeps its own next position id, so RoPE positions of a
left-padded row start at 0 at its first real token. When a forward would overflow, the buffers grow
to the next power of two (few distinct shapes for compiled kernels). :meth:`KVCache.reorder` selects
rows (beam search).

A cached row holds one document: new tokens are either real (joining the row's sequence) or padding.

Shape legend: b batch, s new tokens, t filled slots, n_kv key/value heads, h_d head dim.
"""

from __future__ import annotations

import torch

from ._mask import AttentionMask
from .errors import CacheError

__all__ = ["KVCache", "KVCacheLayer"]


class KVCacheLayer:
    """One layer's view of a :class:`KVCache`; attention calls :meth:`append`."""

    def __init__(self, cache: KVCache, index: int) -> None:
        self.cache, self.index = cache, index

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[b, n_kv, s, h_d]`` into the slots reserved by the current forward.

        Returns:
            All filled keys and values, each ``[b, n_kv, t, h_d]``.
        """
        c = self.cache
        end = c.length
        kb, vb = c.keys[self.index], c.values[self.index]
        kb[:, :, end - k.shape[2] : end] = k
        vb[:, :, end - v.shape[2] : end] = v
        return kb[:, :, :end], vb[:, :, :end]


class KVCache:
    """Per-layer k/v buffers, per-row key-valid mask and positions.

    Args:
        num_layers: Decoder layers.
        batch: Rows ``b``.
        num_kv_heads: ``n_kv``.
        head_dim: ``h_d``.
        capacity: Initial number of slots (prompt + new tokens).
        dtype: Buffer dtype (the model's activation dtype).
        device: Buffer device.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise CacheError(f"KVCache: batch={batch} and capacity={capacity} must be positive")
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # [b, capacity]
        self.positions = torch.zeros(batch, dtype=torch.long, device=device)  # next position per row
        self.length = 0  # filled slots, shared by all rows

    @property
    def batch_size(self) -> int:
        """Rows ``b``."""
        return self.valid.shape[0]

    @property
    def capacity(self) -> int:
        """Allocated slots."""
        return self.valid.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        """Real (non-pad) tokens cached per row, ``[b]``."""
        return self.valid[:, : self.length].sum(-1)

    def layer(self, index: int) -> KVCacheLayer:
        """The view of layer ``index`` that attention writes to."""
        return KVCacheLayer(self, index)

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` slots, growing to the next power of two when needed."""
        if slots <= self.capacity:
            return
        new_cap = 1 << (slots - 1).bit_length()
        self.keys = [_grow(k, 2, new_cap) for k in self.keys]  # [b, n_kv, new_cap, h_d]
        self.values = [_grow(v, 2, new_cap) for v in self.values]
        self.valid = _grow(self.valid, 1, new_cap)  # [b, new_cap]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` ``[b']`` (e.g. surviving beams); rows may repeat."""
        index = index.to(self.valid.device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)
        self.positions = self.positions.index_select(0, index)

    def advance(
        self, new_valid: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, AttentionMask]:
        """Reserve slots for ``s`` new tokens and return their positions and attention mask.

        Called once per forward by the decoder, before the layers append.

        Args:
            new_valid: ``[b, s]`` bool, False where a new token is padding.
            position_ids: ``[b, s]`` explicit positions, or ``None`` to continue each row's count.

        Returns:
            ``position_ids`` ``[b, s]`` and the :class:`AttentionMask` over the ``t`` filled slots.
        """
        b, s = new_valid.shape
        if b != self.batch_size:
            raise CacheError(f"KVCache: batch has {b} rows but the cache has {self.batch_size}")
        start = self.length
        self.reserve(start + s)
        self.valid[:, start : start + s] = new_valid
        if position_ids is None:
            counts = new_valid.long().cumsum(-1)  # [b, s]
            position_ids = self.positions[:, None] + (counts - 1).clamp(min=0)
        self.positions = self.positions + new_valid.long().sum(-1)
        self.length = start + s
        return position_ids, AttentionMask.for_cache(new_valid, self.valid[:, : self.length])


def _grow(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Copy ``t`` into a zero (False) tensor that is ``size`` long along ``dim``."""
    shape = list(t.shape)
    shape[dim] = size
    out = t.new_zeros(shape)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out
