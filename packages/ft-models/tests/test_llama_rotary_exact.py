"""``apply_rotary`` is bit-identical to transformers' ``apply_rotary_pos_emb``, values and gradients.

ft computes ``rotate_half(x) * sin`` as ``roll(x) * (sign * sin)`` (fewer ops in the backward); negating a
factor is exact, so nothing may change, in fp32 or bf16. Awkward shapes: head_dim 10, 3 heads, odd
sequence length, per-row positions (packed / left-padded rows).
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ft_models import RopeConfig, RotaryEmbedding
from ft_models._rope import apply_rotary


def _tables(head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    rope = RotaryEmbedding(RopeConfig(theta=10000.0), head_dim)
    rope.reset_parameters("cpu")
    positions = torch.stack([torch.arange(13), torch.arange(13).flip(0), torch.arange(13) % 5])  # [3, 13]
    return rope(positions)


def _reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # transformers' own function, with the fp32 math ft documents (upcast, rotate, cast back).
    q32, k32 = apply_rotary_pos_emb(q.float(), k.float(), cos, sin)
    return q32.to(q.dtype), k32.to(k.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_bit_identical(dtype: torch.dtype) -> None:
    cos, sin = _tables(10)
    gen = torch.Generator().manual_seed(0)
    q = (torch.randn(3, 3, 13, 10, generator=gen) * 4).to(dtype).requires_grad_(True)
    k = (torch.randn(3, 1, 13, 10, generator=gen) * 4).to(dtype).requires_grad_(True)
    gq = torch.randn(q.shape, generator=gen).to(dtype)
    gk = torch.randn(k.shape, generator=gen).to(dtype)
    ours = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    ours_grads = torch.autograd.grad(ours, (q, k), (gq, gk))
    ref = _reference(q, k, cos, sin)
    ref_grads = torch.autograd.grad(ref, (q, k), (gq, gk))
    for a, b in zip((*ours, *ours_grads), (*ref, *ref_grads), strict=True):
        assert a.dtype == dtype
        assert torch.equal(a, b)
    # Wrong variant: the roll without the sign (rotate_half's negation lost) is a different rotation.
    half = 5
    unsigned = (q.float() * cos[:, None] + q.float().roll(half, -1) * sin[:, None]).to(dtype)
    assert not torch.allclose(unsigned.float(), ref[0].float(), atol=1e-2)
