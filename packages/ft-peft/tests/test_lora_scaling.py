"""The adapter scale applied on the rank-r side (when it is a power of two) is bit-identical to PEFT.

LoRALinear multiplies the ``[..., r]`` product by ``s = alpha / r`` instead of the ``[..., d_out]``
output when ``s`` is a power of two (exact in floating point) to save elementwise work. These tests
hold outputs and gradients to PEFT bit for bit, for power-of-two and other scales, in fp32 and with a
bf16 base and bf16 compute, and show that the shortcut would not be exact for other scales.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft_support import Block, randomize_adapters

import ft_peft
from ft_peft import LoRALinear


def _pair(rank: int, alpha: float, dtype: torch.dtype, adapter_dtype: torch.dtype):
    torch.manual_seed(0)
    base = Block(d_in=41, d_hidden=29, d_out=17).to(dtype)
    ours = copy.deepcopy(base)
    ft_peft.apply_lora(ours, ["proj", "out"], rank=rank, alpha=alpha, adapter_dtype=adapter_dtype)
    randomize_adapters(ours)
    theirs = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(target_modules=["proj", "out"], r=rank, lora_alpha=alpha),
        autocast_adapter_dtype=adapter_dtype == torch.float32,
    )
    with torch.no_grad():
        for name in ("proj", "out"):
            mine, ref = ours.get_submodule(name), theirs.base_model.model.get_submodule(name)
            ref.lora_A["default"].weight.data = mine.lora_A.weight.detach().clone()
            ref.lora_B["default"].weight.data = mine.lora_B.weight.detach().clone()
    return ours, theirs


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
    (y.float() * g.float()).sum().backward()
    adapters = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    return y.detach(), [x.grad, *adapters]


@pytest.mark.parametrize(
    ("rank", "alpha"),
    [(8, 16.0), (4, 2.0), (6, 9.0), (5, 7.0)],
    ids=["s=2", "s=0.5", "s=1.5", "s=1.4"],
)
@pytest.mark.parametrize(
    ("dtype", "adapter_dtype"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["fp32", "bf16-base", "bf16"],
)
def test_outputs_and_gradients_equal_peft_bitwise(rank, alpha, dtype, adapter_dtype) -> None:
    ours, theirs = _pair(rank, alpha, dtype, adapter_dtype)
    x = torch.randn(3, 7, 41).to(dtype)
    y_ours, g_ours = _grads(ours, x)
    y_ref, g_ref = _grads(theirs, x)
    assert torch.equal(y_ours, y_ref)
    assert len(g_ours) == len(g_ref) == 5
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.equal(a, b)


def test_rank_side_scaling_is_exact_only_for_powers_of_two() -> None:
    # Wrong variant: applying a non-power-of-two scale on the rank side rounds differently from PEFT,
    # which is why LoRALinear keeps such scales on the output side.
    torch.manual_seed(1)
    layer = LoRALinear(torch.nn.Linear(64, 48), rank=6, alpha=9.0)  # s = 1.5
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(32, 64)
    reference = layer.lora_B(layer.lora_A(x)) * layer.scaling
    rank_side = layer.lora_B(layer.lora_A(x) * layer.scaling)
    assert not torch.equal(rank_side, reference)
    assert torch.equal(layer._scaled_lora(x), reference)
