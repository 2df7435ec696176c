"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024, arXiv:2402.09353).

DoRA splits the adapted weight W' = W + s * B A into a magnitude `m` (one value per output row) and a
direction: W'' = m * W' / ||W'||_row. As the paper recommends (section 4.3) and PEFT does, the row norm
is treated as a constant in the backward pass: it is computed from the *detached* low-rank update and
then detached itself, so gradients reach `m`, A and B only through the numerator. That keeps the
memory of the backward pass at plain LoRA's level and is what makes ft's gradients equal PEFT's.

Shape legend: d_out output features, d_in input features, r rank, ... leading (batch) dims.
"""

from __future__ import annotations

import torch

__all__ = ["dora_delta", "weight_norm"]


def weight_norm(weight: torch.Tensor, delta: torch.Tensor, scaling: float) -> torch.Tensor:
    """Row norms of the adapted weight, constant for autograd.

    Args:
        weight: Dense base weight, `[d_out, d_in]`.
        delta: Unscaled low-rank update B @ A, `[d_out, d_in]`.
        scaling: LoRA scaling (alpha / r, or alpha / sqrt(r) with rsLoRA).

    Returns:
        `[d_out]` norms, detached from the graph.
    """
    adapted = weight + scaling * delta.detach()  # [d_out, d_in]
    return torch.linalg.norm(adapted, dim=1).to(weight.dtype).detach()


def dora_delta(
    base_no_bias: torch.Tensor,
    lora_out: torch.Tensor,
    magnitude: torch.Tensor,
    norm: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """What DoRA adds to the base layer's output.

    With mag = m / ||W + s B A||, the DoRA output is mag * (W x + s B A x) + bias, written as a
    correction of the base output so the base matmul is shared: (mag - 1) * W x + mag * s * B A x.

    Args:
        base_no_bias: W x without bias, `[..., d_out]`.
        lora_out: B A x (unscaled), `[..., d_out]`.
        magnitude: The learned magnitude vector m, `[d_out]`.
        norm: Row norms from `weight_norm`, `[d_out]`.
        scaling: LoRA scaling.
    """
    mag = (magnitude / norm).view(1, -1)  # [1, d_out], broadcasts over leading dims
    return (mag - 1) * base_no_bias + mag * lora_out * scaling
