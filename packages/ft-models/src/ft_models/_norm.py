"""Root-mean-square layer normalisation (RMSNorm, Zhang & Sennrich 2019, arXiv:1910.07467).

The statistic is computed in fp32 whatever the activation dtype, because the mean of squares of bf16
activations loses the precision the normalisation depends on; the result is cast back before the
(learned) weight multiplies it, exactly as the Llama reference does.

:class:`UnitOffsetRMSNorm` is Gemma's variant (Gemma Team 2024, arXiv:2408.00118): the gain is stored as
an offset from one, ``(1 + weight)``, initialised to zeros, and the product is taken in fp32 before the
cast back. It is a separate module injected by a builder, not a flag on :class:`RMSNorm`.
"""

import torch
from torch import nn

__all__ = ["RMSNorm", "UnitOffsetRMSNorm"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x**2) + eps)`` over the last dimension.

    Args:
        dim: Size of the normalised (last) dimension.
        eps: Added to the mean of squares for numerical safety.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        """Initialise the gain to ones (identity normalisation)."""
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[..., dim]``; returns the same shape and dtype as ``x``."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class UnitOffsetRMSNorm(nn.Module):
    """``(1 + weight) * x / sqrt(mean(x**2) + eps)`` computed in fp32, cast back to ``x``'s dtype.

    Args:
        dim: Size of the normalised (last) dimension.
        eps: Added to the mean of squares for numerical safety.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        """Initialise the offset to zeros (identity normalisation)."""
        nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[..., dim]``; returns the same shape and dtype as ``x``."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
