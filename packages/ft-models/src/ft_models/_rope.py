"""Rotary position embedding (RoPE, Su et al. 2021, arXiv:2104.09864) in the rotate-half layout.

The rotate-half layout pairs dimension ``i`` with ``i + head_dim/2`` (the layout of Hugging Face
checkpoints), so HF q/k projections load without permutation. Frequencies support plain RoPE, linear
position interpolation (Chen et al. 2023, arXiv:2306.15595) and the Llama 3.1 frequency scaling
(wavelengths longer than the pre-training context divided by ``factor``, short ones kept, a smooth
blend between). Angles, cos and sin are computed in fp32 from per-token ``position_ids``, so packed
documents and left-padded rows each get their own positions, and the rotation itself runs in fp32.

Shape legend: b batch, s sequence, n_h heads, h_d head dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._config import RopeConfig

__all__ = ["RotaryEmbedding", "apply_rotary", "compute_inv_freq"]


def compute_inv_freq(rope: RopeConfig, head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Inverse frequencies ``[h_d / 2]`` in fp32, with the configured scaling applied.

    Computed on the CPU in fp32 (then moved), the way the reference computes them, so that
    checkpoints reproduce their reference logits bit for bit in the frequencies.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponent)
    if rope.rope_type == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.rope_type == "llama3":
        low, high = rope.low_freq_factor or 1.0, rope.high_freq_factor or 4.0
        old_ctx = rope.original_max_position_embeddings or 8192
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(is_medium, blended, scaled)
    return inv_freq.to(device) if device is not None else inv_freq


class RotaryEmbedding(nn.Module):
    """Produces the fp32 ``cos``/``sin`` tables for the positions of one forward pass.

    ``inv_freq`` is a non-persistent buffer (not part of the state dict); after building on the meta
    device call :meth:`reset_parameters` with the target device to compute it.

    Args:
        rope: RoPE settings.
        head_dim: Rotated dimension per head.
    """

    inv_freq: torch.Tensor

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        super().__init__()
        self.rope = rope
        self.head_dim = head_dim
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)

    def reset_parameters(self, device: torch.device | str | None = None) -> None:
        """(Re)compute ``inv_freq`` on ``device`` (default: where the buffer lives, CPU if meta)."""
        if device is None:
            device = self.inv_freq.device if not self.inv_freq.is_meta else torch.device("cpu")
        self.inv_freq = compute_inv_freq(self.rope, self.head_dim, torch.device(device))

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)``, each ``[b, s, h_d]`` fp32, for ``position_ids`` ``[b, s]``."""
        freqs = position_ids.float()[..., None] * self.inv_freq.float()  # [b, s, h_d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, h_d]
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[b, n_h, s, h_d]`` by the angles in ``cos``/``sin`` ``[b, s, h_d]`` (fp32 math).

    ``rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` is computed as
    ``roll(x, h_d / 2) * (sign * sin)`` with ``sign = (-1, ..., -1, 1, ..., 1)``: negating a factor is
    exact, so values and gradients are bit-identical to the reference formula, while the backward needs
    one roll instead of a negation, a concatenation and two zero-filled slice gradients per call.

    Returns a tensor of ``x``'s dtype.
    """
    x32 = x.float()
    half = x.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # [b, s, h_d]
    rotated = x32.roll(half, dims=-1)  # cat(x2, x1): [b, n_h, s, h_d]
    return (x32 * cos[:, None] + rotated * signed_sin[:, None]).to(x.dtype)
