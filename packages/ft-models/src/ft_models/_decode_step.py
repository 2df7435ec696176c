"""Static-shape single-token decode step over a preallocated KV cache (compile-once decoding).

A prompt forward has a new shape every time, but one decode step need not: the new token of every
row is written at the same cache slot, given as a *tensor* (``index_copy_``), and attention reads the
whole ``capacity``-long buffer under a key mask ``valid & (slot <= current)``. Inputs are therefore the
same shapes at every step of a generation and across generations with the same batch and cache
capacity, and capacities come in power-of-two buckets (:meth:`KVCache.reserve`), so
``torch.compile`` captures the step once per bucket (no recompilation per step or per prompt
length). The step prepares only what differs from a prompt forward (the RoPE tables of the new
positions, :meth:`AttentionMask.for_decode_step` and slot-addressed cache views) and hands them to
:meth:`TransformerDecoder.forward_prepared`, the same embedding, layers and final norm a forward runs,
so every family that composes :class:`TransformerDecoder` works unchanged. The mask and RoPE tables
are built once per step, not per layer, and nothing syncs with the host.

Decoding a few rows is memory-bound: each step streams every weight once. On a CPU the compiled step
therefore runs under :class:`RowwiseLinear`, which computes every linear layer with at most
``max_rows`` input rows as a fused streaming reduction instead of a BLAS matrix-vector call, and under
:class:`SingleQueryAttention`, which replaces the flash-attention kernel (slow for one query) by two
small fp32 products (see :mod:`._rowwise`); the eager step keeps ``F.linear``, SDPA and their numerics.
The weights those reductions stream are read in 2 MB pages (:mod:`._hugepages`): in 4 KB pages the
compiled step read them well below streaming speed.
Both reroutes were measured to pay off on CPUs only (bench/README.md): on a GPU cuBLAS's
matrix-vector kernels and SDPA's decode kernels are what the reroutes would replace, so a model on
any other device runs the plain compiled step (:func:`uses_cpu_reroutes` decides).

Shape legend: b batch, t cache capacity, d model dim, v vocabulary.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from ._cache import KVCache, KVCacheLayer
from ._decoder import CausalLM
from ._hugepages import place_in_huge_pages
from ._mask import AttentionMask
from ._rowwise import RowwiseLinear, SingleQueryAttention

__all__ = ["DecodeStep", "uses_cpu_reroutes"]

_StepFn = Callable[..., torch.Tensor]
_compiled: dict[bool, _StepFn] = {}  # rerouted or not -> the process's one compiled wrapper
_in_huge_pages: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # models whose tensors were moved

# Largest batch whose linear layers the compiled step computes as streaming reductions. At one row
# the fused reduction beats BLAS's matrix-vector product; from two rows on, the reduction as inductor
# fuses it into the whole step is compute-bound and BLAS (which reuses each weight tile across the
# rows) wins by a wide margin, so only single-row steps are rewritten (per-step timings:
# bench/README.md, "Measurements behind code choices").
ROWWISE_MAX_ROWS = 1

# Inductor options of the CPU step. By default inductor recomputes a pointwise producer of up to 50
# operations inside each consumer rather than storing it; inside a streaming reduction that recomputes
# the RMSNorm before a projection, or the SiLU gate before ``down_proj``, once per *weight element*
# (the input row is broadcast over the output rows), which made the reductions compute-bound at about
# half the machine's read rate. A threshold of 1 stores such an input once (a few KB) and leaves the
# reduction a multiply-add over the streamed weight (bench/README.md, "Measurements behind code choices").
CPU_STEP_OPTIONS: dict[str, str | int | bool | Callable[..., Any]] = {"realize_opcount_threshold": 1}


def _rowwise_forward(*args: object) -> torch.Tensor:
    """:func:`_forward` with few-row linears as fused reductions and single-query attention as two
    small products (traced by dynamo, no graph break)."""
    with RowwiseLinear(ROWWISE_MAX_ROWS), SingleQueryAttention():
        return _forward(*args)  # type: ignore[arg-type]


def uses_cpu_reroutes(device: torch.device | str) -> bool:
    """Whether the compiled step on ``device`` runs under the CPU reroutes (:class:`RowwiseLinear`,
    :class:`SingleQueryAttention`): on a CPU, the only device they were measured to pay off on."""
    return torch.device(device).type == "cpu"


def _compiled_forward(reroute: bool) -> _StepFn:
    """One compiled wrapper per kind for the process: dynamo caches a graph per model, batch and capacity."""
    if reroute not in _compiled:
        fn, options = (_rowwise_forward, CPU_STEP_OPTIONS) if reroute else (_forward, None)
        _compiled[reroute] = torch.compile(fn, dynamic=False, options=options)
    return _compiled[reroute]


class DecodeStep:
    """Feed one token per row through ``model`` on a cache; optionally compiled.

    Args:
        model: The model; its decoder must be a :class:`TransformerDecoder` whose layers have a
            ``self_attn`` (the mask honours their sliding windows).
        compile: Run the step through ``torch.compile(dynamic=False)``: captured once per model, batch
            size and cache capacity. Worth it for long generations; the first step pays compilation.
            A model on a CPU gets the CPU reroutes (:func:`uses_cpu_reroutes`), any other the plain step;
            on a CPU the model's tensors are first moved into 2 MB pages, once per model
            (:func:`~ft_models.place_in_huge_pages`: same tensors and values, other memory).
    """

    def __init__(self, model: CausalLM, *, compile: bool = False) -> None:
        self.model = model
        self.windows: tuple[int | None, ...] = tuple(
            sorted({getattr(layer.self_attn, "window", None) for layer in model.model.layers}, key=str)
        )
        device = model.model.embed_tokens.weight.device
        reroute = uses_cpu_reroutes(device)
        self.fn: _StepFn = _compiled_forward(reroute) if compile else _forward
        if compile and reroute and model not in _in_huge_pages:
            place_in_huge_pages(model)  # once per model: the compiled step streams them 2 MB a page
            _in_huge_pages.add(model)

    def __call__(self, cache: KVCache, tokens: torch.Tensor, new_valid: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[b]`` (``new_valid`` ``[b]`` False: padding); return fp32 logits ``[b, v]``."""
        t = cache.length
        cache.reserve(t + 1)
        cache.valid[:, t] = new_valid
        cache.token_ids[:, t] = torch.where(new_valid, tokens, -1)
        slot = torch.full((1,), t, dtype=torch.long, device=tokens.device)
        logits = self.fn(
            self.model, self.windows, tokens, cache.positions, slot, cache.valid, cache.keys, cache.values
        )
        cache.positions = cache.positions + new_valid.long()
        cache.length = t + 1
        return logits


def _forward(
    model: CausalLM,
    windows: tuple[int | None, ...],
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: torch.Tensor,
    valid: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
) -> torch.Tensor:
    """The step itself: ``tokens`` ``[b]`` at RoPE ``positions`` ``[b]``, written at cache ``slot``."""
    decoder = model.model
    rope = decoder.rotary_emb(positions[:, None])  # cos, sin [b, 1, h_d]
    mask = AttentionMask.for_decode_step(valid, slot, windows)
    caches = [KVCacheLayer(keys[i], values[i], slot=slot) for i in range(len(keys))]
    h = decoder.forward_prepared(tokens[:, None], rope, mask, caches)  # [b, 1, d]
    return model.output_projection(h[:, -1]).float()  # [b, v]
