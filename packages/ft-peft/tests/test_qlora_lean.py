"""Lean QLoRA: the frozen quantised base is dequantised again in the backward, never saved dense for it.

The reference for the numerics is the plain autograd path the layer used before (``F.linear`` over the
dequantised weight, which autograd keeps for the backward); the memory is measured with
``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd saves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from peft_support import Block, randomize_adapters
from torch import nn

import ft_peft
from ft_peft import LoRALinear, QuantConfig

D_IN, D_OUT = 320, 448  # large enough that a dense weight dwarfs the activations of a short input
CONFIGS = {
    "nf4": QuantConfig("nf4", compute_dtype=torch.float32),
    "nf4-double-bf16": QuantConfig("nf4", double_quant=True, compute_dtype=torch.bfloat16),
    "fp4": QuantConfig("fp4", compute_dtype=torch.float32),
    "int8": QuantConfig("int8", compute_dtype=torch.float32),
}


def _layer(
    cfg: QuantConfig, *, use_dora: bool = False, dropout: float = 0.0, bias: bool = True
) -> LoRALinear:
    torch.manual_seed(0)
    lin = nn.Linear(D_IN, D_OUT, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, 0.5)
    layer = LoRALinear(lin, rank=4, alpha=8, dropout=dropout, use_dora=use_dora, quantize=cfg, name="proj")
    randomize_adapters(layer)
    return layer.train()


@contextlib.contextmanager
def _autograd_base(layer: LoRALinear) -> Iterator[None]:
    """The previous implementation: ``F.linear`` over the dequantised weight, saved by autograd."""
    layer._quantized_linear = lambda x, bias: F.linear(x, layer.dense_weight(x.dtype), bias)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del layer._quantized_linear


def _run(layer: LoRALinear, x: torch.Tensor, seed: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.detach().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks in every run
    y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [x.grad, *(p.grad for p in layer.adapter_parameters())]
    for p in layer.adapter_parameters():
        p.grad = None
    return y.detach(), grads  # type: ignore[return-value]


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for the backward while ``fn`` runs."""
    seen: dict[tuple[int, tuple[int, ...], torch.dtype], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.data_ptr(), tuple(t.shape), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    ("use_dora", "dropout"), [(False, 0.0), (True, 0.0), (True, 0.3)], ids=["lora", "dora", "dora-dropout"]
)
def test_gradients_equal_the_autograd_path(name: str, use_dora: bool, dropout: float) -> None:
    layer = _layer(CONFIGS[name], use_dora=use_dora, dropout=dropout)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1))
    y, grads = _run(layer, x)
    with _autograd_base(layer):
        y_ref, grads_ref = _run(layer, x)
    # The same dequantised weight and the same matmuls: bit for bit.
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    for got, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, ref, atol=0, rtol=0)
    # Wrong variant: a frozen base that passes no gradient to its input (a detached x) fails the same check.
    layer._quantized_linear = lambda x, bias: F.linear(x.detach(), layer.dense_weight(x.dtype), bias)  # type: ignore[method-assign]
    _, grads_wrong = _run(layer, x)
    assert not torch.allclose(grads_wrong[0], grads_ref[0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(("use_dora", "dropout"), [(False, 0.0), (True, 0.3)], ids=["lora", "dora-dropout"])
def test_no_dense_weight_is_saved_for_backward(name: str, use_dora: bool, dropout: float) -> None:
    cfg = CONFIGS[name]
    layer = _layer(cfg, use_dora=use_dora, dropout=dropout)
    x = torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(1), requires_grad=True)
    packed = ft_peft.quantized_nbytes(layer._stored())
    dense = D_OUT * D_IN * cfg.compute_dtype.itemsize
    adapters = sum(p.numel() * p.element_size() for p in layer.adapter_parameters())
    # Activations: a handful of [6, d] tensors (inputs, dropout mask, adapter products, DoRA terms).
    activations = 8 * x.numel() * 4 + 8 * 6 * D_OUT * 4

    def step() -> None:
        layer(x).sum()

    lean = _saved_bytes(step)
    assert lean <= packed + adapters + activations, (lean, packed)
    assert lean < 0.5 * dense, (lean, dense)
    # Wrong variant: the autograd path saves the dense weight (at least its full size).
    with _autograd_base(layer):
        kept = _saved_bytes(step)
    assert kept >= dense, (kept, lean, dense)


def test_whole_model_saves_about_the_packed_base() -> None:
    """A two-layer QLoRA block: what the backward keeps is the packed base plus activations."""
    torch.manual_seed(0)
    model = Block(d_in=D_IN, d_hidden=D_OUT, d_out=D_IN)
    cfg = QuantConfig("nf4", double_quant=True, compute_dtype=torch.float32)
    ft_peft.apply_lora(model, ["proj", "out"], rank=4, quantize=cfg)
    ft_peft.set_trainable(model)
    layers = [m for _, m in ft_peft.lora_modules(model)]
    packed = sum(ft_peft.quantized_nbytes(m._stored()) for m in layers)
    dense = sum(m.in_features * m.out_features * 4 for m in layers)
    x = torch.randn(4, D_IN, requires_grad=True)
    lean = _saved_bytes(lambda: model(x).sum())
    assert lean < packed + 0.1 * dense, (lean, packed, dense)
    # Wrong variant: the dense bases kept by the autograd path.
    with _autograd_base(layers[0]), _autograd_base(layers[1]):
        kept = _saved_bytes(lambda: model(x).sum())
    assert kept >= dense, (kept, lean, dense)


def test_bias_gradient_when_the_bias_trains() -> None:
    """A caller who trains the bias gets its gradient (sum over leading dims), as autograd gives it."""
    layer = _layer(CONFIGS["nf4"])
    assert layer.bias is not None
    layer.bias.requires_grad_(True)
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(2))
    layer(x).square().sum().backward()
    lean = layer.bias.grad.clone()
    layer.bias.grad = None
    with _autograd_base(layer):
        layer(x).square().sum().backward()
    torch.testing.assert_close(lean, layer.bias.grad, atol=0, rtol=0)
    # Wrong variant: the mean instead of the sum over the 15 positions.
    assert not torch.allclose(lean / 15, layer.bias.grad, rtol=1e-3)


def _compiled_saved(layer: LoRALinear, x: torch.Tensor) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of what the compiled forward saves for the compiled backward.

    AOTAutograd splits the joint graph with the partitioner Inductor uses (min-cut rematerialisation),
    which may keep or recompute any intermediate; the backward graph's tensor inputs other than the
    incoming gradient are exactly the saved tensors.
    """
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    saved: list[tuple[tuple[int, ...], torch.dtype]] = []

    def backward_compiler(gm: torch.fx.GraphModule, _: object) -> object:
        for node in gm.graph.nodes:
            value = node.meta.get("val")
            if node.op == "placeholder" and isinstance(value, torch.Tensor) and "tangent" not in node.name:
                saved.append((tuple(value.shape), value.dtype))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(
        fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
        bw_compiler=backward_compiler,
        partition_fn=min_cut_rematerialization_partition,
    )
    torch._dynamo.reset()
    torch.compile(layer, backend=backend, fullgraph=True)(x).sum().backward()
    return saved


@pytest.mark.parametrize("name", ["nf4-double-bf16", "int8"])
def test_compiled_graph_saves_no_dense_weight(name: str) -> None:
    """The compiled path (``compile: true``) keeps the packed base too: no `[d_out, d_in]` float saved."""
    layer = _layer(CONFIGS[name], use_dora=True)
    x = torch.randn(2, 3, D_IN, requires_grad=True)
    dense = [(shape, dtype) for shape, dtype in _compiled_saved(layer, x) if shape == (D_OUT, D_IN)]
    assert all(not dtype.is_floating_point for _, dtype in dense), dense
    # Wrong variant: the autograd path compiled the same way saves the dense weight.
    with _autograd_base(layer):
        kept = _compiled_saved(layer, x)
    assert any(shape == (D_OUT, D_IN) and dtype.is_floating_point for shape, dtype in kept), kept
