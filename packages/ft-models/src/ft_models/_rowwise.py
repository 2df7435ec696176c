"""Few-row linear layers as streaming reductions, and single-query attention, for compiled decoding.

At decode time a linear layer multiplies a handful of rows (one token per sequence) by a weight that
is far too large for any cache, so its cost is the time to stream the weight from memory once. CPU
BLAS matrix-vector paths (``F.linear`` with one row) read weights well below the machine's streaming
bandwidth; written as an explicit multiply-and-sum over the input dimension, ``torch.compile``
(inductor) generates one fused vectorised reduction that reads each weight row once, contiguously,
and reuses it for every input row, which runs at streaming speed (the roofline argument of Williams
et al. 2009, "Roofline: an insightful visual performance model": at a few rows the layer's arithmetic
intensity is a few FLOPs per weight element, so only bytes matter).

:class:`RowwiseLinear` is a ``TorchFunctionMode``: while active, every ``F.linear`` call whose input
has at most ``max_rows`` rows is computed by :func:`rowwise_linear` (fp32 accumulation, result in
the input's dtype). It changes no parameter and no module path, so it reaches ``nn.Linear``, a tied
``lm_head`` and adapter layers that call ``F.linear`` on their base weight alike. It is meant to be
active *inside* a compiled function; in eager mode the unfused reduction would materialise a
``[n, m, k]`` product and be slow.

At one new token per row, attention has the same problem at a smaller scale: the CPU flash-attention
kernel behind ``F.scaled_dot_product_attention`` is built for blocks of queries, and for a single bf16
query a call costs many times its arithmetic, a sizeable share of a small model's bf16 decode step
(figures: bench/README.md, "Measurements behind code choices"). :class:`SingleQueryAttention`
computes those calls as two small fp32 matrix products around a masked softmax
(:func:`single_query_attention`, GQA by grouping the query heads, keys never copied per head).

Shape legend: m input rows, k input features, n output features; b batch, n_h query heads, n_kv
key/value heads, g = n_h / n_kv, t keys, h_d head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["RowwiseLinear", "SingleQueryAttention", "rowwise_linear", "single_query_attention"]


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` written as a per-output-row reduction with fp32 accumulation.

    The product is laid out ``[n, m, k]`` (weight row outermost), so the fused kernel reads a weight
    row once and applies it to every input row while it is in cache: the weight is streamed once
    whatever ``m`` is.

    Args:
        x: ``[..., k]`` input with few rows (``m`` = product of the leading dims).
        weight: ``[n, k]``.
        bias: ``[n]`` or ``None``.

    Returns:
        ``[..., n]`` in ``x``'s dtype.
    """
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]).float()  # [m, k]
    out = (weight.float()[:, None, :] * rows[None]).sum(-1)  # [n, m]
    if bias is not None:
        out = out + bias.float()[:, None]
    return out.t().to(x.dtype).reshape(*lead, weight.shape[0])  # [..., n]


class _Reroute(TorchFunctionMode):
    """A mode that computes some calls itself (:meth:`reroute`) and runs every other one unchanged."""

    def reroute(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """The result of ``func(*args, **kwargs)`` computed another way, or ``None`` to run it as is."""
        raise NotImplementedError

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run :meth:`reroute`, falling back to ``func``."""
        kwargs = kwargs or {}
        out = self.reroute(func, args, kwargs)
        return func(*args, **kwargs) if out is None else out


class RowwiseLinear(_Reroute):
    """Route ``F.linear`` calls with at most ``max_rows`` input rows through :func:`rowwise_linear`.

    Args:
        max_rows: Largest row count (product of the input's leading dims) rewritten; larger inputs
            (a prompt) keep the BLAS path, where the weight is reused across many rows anyway.
    """

    def __init__(self, max_rows: int) -> None:
        super().__init__()
        self.max_rows = max_rows

    def reroute(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Few-row ``F.linear`` calls as :func:`rowwise_linear`."""
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.dim() == 2 and x.numel() <= self.max_rows * x.shape[-1]:
                return rowwise_linear(x, weight, bias)
        return None


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Masked grouped-query attention for one query per row, in fp32.

    Query head ``i`` attends with key/value head ``i // g``, as ``F.scaled_dot_product_attention``
    with ``enable_gqa=True`` pairs them.

    Args:
        q: ``[b, n_h, 1, h_d]``.
        k: ``[b, n_kv, t, h_d]``.
        v: ``[b, n_kv, t, h_d]``.
        mask: Bool, True = attend, broadcastable to ``[b, n_h, 1, t]`` with a size-1 head axis.
        scale: Multiplier of the dot products.

    Returns:
        ``[b, n_h, 1, h_d]`` in ``q``'s dtype.
    """
    b, n_h, _, h_d = q.shape
    n_kv = k.shape[1]
    grouped = q.reshape(b, n_kv, n_h // n_kv, h_d).float()  # [b, n_kv, g, h_d]
    scores = torch.matmul(grouped, k.float().transpose(-1, -2)) * scale  # [b, n_kv, g, t]
    scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, -1), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())  # [b, n_kv, g, h_d]
    return out.reshape(b, n_h, 1, h_d).to(q.dtype)


class SingleQueryAttention(_Reroute):
    """Route ``F.scaled_dot_product_attention`` calls with one query per row through
    :func:`single_query_attention`.

    Only calls it computes identically are rerouted: a bool ``attn_mask`` with a size-1 head axis, no
    ``is_causal`` (with one query it would mean "key 0 only"), no dropout, and ``enable_gqa`` or equal
    head counts; everything else runs unchanged.
    """

    def reroute(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Single-query masked ``F.scaled_dot_product_attention`` calls as :func:`single_query_attention`."""
        if func is F.scaled_dot_product_attention and len(args) == 3:
            q, k, v = args
            mask = kwargs.get("attn_mask")
            if (
                q.shape[-2] == 1
                and isinstance(mask, torch.Tensor)
                and mask.dtype == torch.bool
                and mask.dim() == 4
                and mask.shape[1] == 1
                and not kwargs.get("is_causal", False)
                and not kwargs.get("dropout_p", 0.0)
                and (kwargs.get("enable_gqa", False) or q.shape[1] == k.shape[1])
            ):
                scale = kwargs.get("scale")
                return single_query_attention(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale)
        return None
