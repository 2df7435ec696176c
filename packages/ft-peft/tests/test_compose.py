"""LoRA, DoRA and QLoRA layers compose with torch.compile(fullgraph=True) and activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_support import Block, randomize_adapters
from torch import nn
from torch.utils.checkpoint import checkpoint

import ft_peft
from ft_peft import QuantConfig

VARIANTS = {
    "lora": {},
    "dora": {"use_dora": True},
    "qlora-nf4": {
        "use_dora": True,
        "quantize": QuantConfig("nf4", double_quant=True, compute_dtype=torch.float32),
    },
    "qlora-int8": {"quantize": QuantConfig("int8", compute_dtype=torch.float32)},
}


def _model(dropout: float, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = Block()
    ft_peft.apply_lora(model, ["proj", "out"], rank=3, alpha=5, dropout=dropout, **kwargs)
    ft_peft.set_trainable(model)
    randomize_adapters(model)
    return model


def _grads(model: nn.Module, forward, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = forward(x)
    y.square().sum().backward()
    return y.detach(), [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compile_fullgraph_matches_eager(variant: str) -> None:
    torch._dynamo.reset()
    eager = _model(0.0, **VARIANTS[variant])
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)  # a graph break would raise
    x = torch.randn(4, 6, 37, generator=torch.Generator().manual_seed(3))
    y_e, g_e = _grads(eager, eager, x)
    y_c, g_c = _grads(compiled_model, compiled, x)
    tol = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(y_c, y_e, **tol)
    for a, b in zip(g_c, g_e, strict=True):
        torch.testing.assert_close(a, b, **tol)
    # Wrong variant: eager with another alpha must not pass the same comparison.
    for _, layer in ft_peft.lora_modules(eager):
        layer.alpha *= 2
    with torch.no_grad():
        assert not torch.allclose(compiled(x), eager(x), **tol)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_non_reentrant_checkpoint_gives_identical_gradients(variant: str) -> None:
    model = _model(0.25, **VARIANTS[variant])  # dropout on: the recomputation must replay the same masks
    model.train()
    x = torch.randn(4, 6, 37, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(9)
    y_plain, g_plain = _grads(model, model, x)
    model.zero_grad()
    torch.manual_seed(9)
    y_ckpt, g_ckpt = _grads(model, lambda t: checkpoint(model, t, use_reentrant=False), x)
    torch.testing.assert_close(y_ckpt, y_plain, atol=0, rtol=0)
    for a, b in zip(g_ckpt, g_plain, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # Wrong variant: without RNG replay the recomputed dropout masks differ, and so do the gradients.
    model.zero_grad()
    torch.manual_seed(9)
    _, g_bad = _grads(model, lambda t: checkpoint(model, t, use_reentrant=False, preserve_rng_state=False), x)
    assert not all(torch.equal(a, b) for a, b in zip(g_bad, g_plain, strict=True))
