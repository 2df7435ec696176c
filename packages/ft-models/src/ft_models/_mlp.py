"""SwiGLU feed-forward block (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202).

``down_proj(silu(gate_proj(x)) * up_proj(x))`` with transformers' projection names, so HF state dicts
and LoRA ``target_modules`` (``gate_proj``, ``up_proj``, ``down_proj``) match. The gate activation is
injected: SiLU gives SwiGLU (Llama, Qwen, Mistral), GELU with the tanh approximation gives GeGLU
(Gemma). :data:`ACTIVATIONS` maps transformers' ``hidden_act`` names to them.

Shape legend: d model dim, f intermediate dim.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "GatedMLP", "gelu_tanh"]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (transformers' ``gelu_pytorch_tanh``)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": gelu_tanh,
}


class GatedMLP(nn.Module):
    """Gated MLP ``[..., d] -> [..., d]``.

    Args:
        hidden_size: ``d``.
        intermediate_size: ``f``.
        bias: Bias on all three projections.
        activation: Gate activation (SiLU for SwiGLU; GELU-tanh gives GeGLU).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        *,
        bias: bool = False,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    ) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x`` ``[..., d]``."""
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))  # [..., d]
