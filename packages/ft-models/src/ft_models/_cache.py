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
    """One layer's view of a :class:`KVCache`; attention calls :meth:`append`.

    Two modes: by default the new keys fill the slots just reserved by the current forward and the
    filled prefix ``[0, t)`` is returned; with ``slot`` (a 0-d/1-element long tensor, the static decode
    step) one new key is written at that slot and the whole buffer is returned, so shapes never change
    from step to step and a compiled step is captured once per capacity.

    Args:
        keys: This layer's key buffer ``[b, n_kv, capacity, h_d]``.
        values: This layer's value buffer, same shape.
        end: Filled slots after the current forward (dynamic mode).
        slot: Where the single new token goes (static mode), or ``None``.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, end: int = 0, slot: torch.Tensor | None = None
    ) -> None:
        self.keys, self.values, self.end, self.slot = keys, values, end, slot

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` ``[b, n_kv, s, h_d]`` into the reserved slots.

        Returns:
            Keys and values to attend to, each ``[b, n_kv, t, h_d]`` (``t = capacity`` in static mode).
        """
        kb, vb = self.keys, self.values
        if self.slot is not None:
            kb.index_copy_(2, self.slot, k.to(kb.dtype))
            vb.index_copy_(2, self.slot, v.to(vb.dtype))
            return kb, vb
        end = self.end
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
        # Token id held by each slot (-1: padding or unknown), kept by generation for prefix reuse.
        self.token_ids = torch.full((batch, capacity), -1, dtype=torch.long, device=device)  # [b, capacity]
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
        return KVCacheLayer(self.keys[index], self.values[index], end=self.length)

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` slots, growing to the next power of two when needed."""
        if slots <= self.capacity:
            return
        new_cap = 1 << (slots - 1).bit_length()
        self.keys = [_grow(k, 2, new_cap) for k in self.keys]  # [b, n_kv, new_cap, h_d]
        self.values = [_grow(v, 2, new_cap) for v in self.values]
        self.valid = _grow(self.valid, 1, new_cap)  # [b, new_cap]
        self.token_ids = _grow(self.token_ids, 1, new_cap, fill=-1)  # [b, new_cap]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` ``[b']`` (e.g. surviving beams); rows may repeat."""
        index = index.to(self.valid.device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.valid = self.valid.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.token_ids = self.token_ids.index_select(0, index)

    def truncate(self, slots: int) -> None:
        """Forget every slot from ``slots`` on (buffers keep their capacity); positions follow."""
        if not 0 <= slots <= self.length:
            raise CacheError(f"KVCache: cannot truncate to {slots} slots, {self.length} are filled")
        self.valid[:, slots:] = False
        self.token_ids[:, slots:] = -1
        self.length = slots
        self.positions = self.valid[:, :slots].long().sum(-1)

    def reusable_prefix(self, prompts: list[torch.Tensor]) -> int:
        """Slots that can be kept for new ``prompts`` (multi-turn reuse of a longest common prefix).

        Each row keeps the cached tokens that begin its new prompt (at least one prompt token is left to
        recompute, which produces the next logits). Slots are shared by all rows, so the cut is the
        earliest slot at which some row's cached tokens stop matching. Pads inside the kept range stay
        invalid slots and are never attended.

        Args:
            prompts: One 1-D id tensor per row (the whole conversation so far).

        Returns:
            The number of leading slots to keep; :meth:`truncate` to it, then feed each row's rest.
        """
        if len(prompts) != self.batch_size:
            raise CacheError(f"KVCache: {len(prompts)} prompts for a cache of {self.batch_size} rows")
        cut = self.length
        tokens = self.token_ids[:, : self.length].tolist()
        for row, prompt in zip(tokens, prompts, strict=True):
            want = prompt.tolist()
            matched, slot_after = 0, 0
            for slot, tok in enumerate(row):
                if tok < 0:
                    continue
                if matched >= len(want) - 1 or want[matched] != tok:
                    break
                matched += 1
                slot_after = slot + 1
            else:  # every cached token matched: trailing pad slots may stay too
                slot_after = len(row)
            cut = min(cut, slot_after)
        return cut

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


def _grow(t: torch.Tensor, dim: int, size: int, fill: int = 0) -> torch.Tensor:
    """Copy ``t`` into a tensor filled with ``fill`` that is ``size`` long along ``dim``."""
    shape = list(t.shape)
    shape[dim] = size
    out = t.new_full(shape, fill)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out
