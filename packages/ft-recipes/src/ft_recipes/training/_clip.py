"""Gradient-norm clipping (Pascanu et al. 2013) that reports the total norm.

One global norm over all gradients (not per parameter), the quantity a run logs. A non-finite norm
leaves the gradients unscaled so the caller can detect it and skip the step with a clear message,
rather than silently writing NaN into every gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["clip_grad_norm"]


def clip_grad_norm(
    params: nn.Module | Iterable[torch.Tensor], max_norm: float | None, *, norm_type: float = 2.0
) -> torch.Tensor:
    """Scale gradients so their global ``norm_type`` norm is at most ``max_norm``; return the norm before.

    Args:
        params: a model or parameters; those without ``.grad`` are skipped.
        max_norm: the bound; None only measures.
        norm_type: the p of the p-norm (``inf`` for the max).

    Returns:
        The total norm over all gradients as an fp32 0-d tensor (before clipping).
    """
    source = params.parameters() if isinstance(params, nn.Module) else params
    with_grad = [p for p in source if p.grad is not None]
    grads = [p.grad for p in with_grad if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type).float()
    if max_norm is not None and torch.isfinite(total):
        torch.nn.utils.clip_grads_with_norm_(with_grad, max_norm, total)
    return total
