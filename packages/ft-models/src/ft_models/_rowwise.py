"""Few-row linear layers as streaming reductions, for compiled memory-bound decoding.

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

Shape legend: m input rows, k input features, n output features.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["RowwiseLinear", "rowwise_linear"]


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


class RowwiseLinear(TorchFunctionMode):
    """Route ``F.linear`` calls with at most ``max_rows`` input rows through :func:`rowwise_linear`.

    Args:
        max_rows: Largest row count (product of the input's leading dims) rewritten; larger inputs
            (a prompt) keep the BLAS path, where the weight is reused across many rows anyway.
    """

    def __init__(self, max_rows: int) -> None:
        super().__init__()
        self.max_rows = max_rows

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Intercept ``F.linear``; every other function runs unchanged."""
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if weight.dim() == 2 and x.numel() <= self.max_rows * x.shape[-1]:
                return rowwise_linear(x, weight, bias)
        return func(*args, **kwargs)
