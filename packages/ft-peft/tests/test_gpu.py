"""QLoRA on CUDA: bitsandbytes' CUDA kernels as the reference, compile with Triton, measured memory."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_support import Block, randomize_adapters
from torch import nn

import ft_peft
from ft_peft import LoRALinear, QuantConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _reference_4bit(lin: nn.Linear, kind: str, double_quant: bool, compute: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    ref = bnb.nn.Linear4bit(
        lin.in_features,
        lin.out_features,
        bias=True,
        compute_dtype=compute,
        quant_type=kind,
        compress_statistics=double_quant,
    )
    ref.weight = bnb.nn.Params4bit(
        lin.weight.data.clone().cpu(), requires_grad=False, quant_type=kind, compress_statistics=double_quant
    )
    ref.bias = nn.Parameter(lin.bias.data.clone().cpu(), requires_grad=False)
    return ref.to("cuda")  # quantised by bitsandbytes' CUDA kernel on the move


@pytest.mark.parametrize(("d_in", "d_out"), [(192, 576), (37, 23)], ids=["576x192", "23x37"])
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_qlora_matches_bnb_linear4bit(d_in, d_out, kind, double_quant, compute) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(d_in, d_out).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.normal_(0, 0.5)
    ref = _reference_4bit(lin, kind, double_quant, compute)
    cfg = QuantConfig(kind, double_quant, 64, compute)
    layer = LoRALinear(copy.deepcopy(lin).cuda(), rank=4, alpha=8, quantize=cfg, name="proj")
    randomize_adapters(layer)
    assert torch.equal(layer.weight, ref.weight.data.reshape(-1))  # same bytes from the CUDA kernel
    x = torch.randn(3, 5, d_in, device="cuda").to(compute)
    with torch.no_grad():
        lora = layer.lora_B(layer.lora_A(x.float())) * layer.scaling
        got = layer(x)
        # In bf16, bitsandbytes' CUDA path uses its fused 4-bit kernel (another summation order than
        # dequantise + cuBLAS): allow a couple of bf16 ulps at the outputs' magnitude (~16).
        tol = {"atol": 1e-5, "rtol": 1e-5} if compute == torch.float32 else {"atol": 0.25, "rtol": 2e-2}
        torch.testing.assert_close(got, (ref(x) + lora).to(compute), **tol)
        wrong = _reference_4bit(lin, "fp4" if kind == "nf4" else "nf4", double_quant, compute)
        assert not torch.allclose(got.float(), (wrong(x) + lora).to(compute).float(), **tol)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_cuda_qlora_gradients_equal_peft(use_dora: bool) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = Block()
    quantized = copy.deepcopy(base)
    quantized.proj = _reference_4bit(base.proj, "nf4", True, torch.float32)
    quantized = quantized.cuda()
    config = LoraConfig(target_modules=["proj"], r=4, lora_alpha=6, use_dora=use_dora)
    peft_model = get_peft_model(quantized, config)
    model = copy.deepcopy(base).cuda()
    cfg = QuantConfig("nf4", double_quant=True, compute_dtype=torch.float32)
    ft_peft.apply_lora(model, ["proj"], rank=4, alpha=6, use_dora=use_dora, quantize=cfg)
    ft_peft.set_trainable(model)
    randomize_adapters(model)
    theirs = peft_model.base_model.model.proj
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(model.proj.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(model.proj.lora_B.weight)
        if use_dora:
            theirs.lora_magnitude_vector["default"].weight.copy_(model.proj.lora_magnitude_vector)

    def run(m: nn.Module) -> list[torch.Tensor]:
        x = torch.randn(
            4, 37, device="cuda", generator=torch.Generator("cuda").manual_seed(1), requires_grad=True
        )
        y = m(x)
        y.square().sum().backward()
        return [y.detach(), x.grad] + [p.grad for n, p in sorted(m.named_parameters()) if "lora_" in n]

    for a, b in zip(run(model), run(peft_model), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"use_dora": True}, {"use_dora": True, "quantize": QuantConfig("nf4", True, 64, torch.bfloat16)}],
    ids=["lora", "dora", "qlora"],
)
def test_cuda_compile_fullgraph_matches_eager(kwargs) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Block().cuda()
    ft_peft.apply_lora(model, ["proj", "out"], rank=3, **kwargs)
    ft_peft.set_trainable(model)
    randomize_adapters(model)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    x = torch.randn(8, 37, device="cuda")
    tol = {"atol": 2e-2, "rtol": 2e-2} if "quantize" in kwargs else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(compiled(x), model(x), **tol)


@pytest.mark.parametrize(
    ("cfg", "limit"), [(QuantConfig("nf4"), 0.3), (QuantConfig("int8"), 0.55)], ids=["nf4", "int8"]
)
def test_cuda_memory_of_quantized_base(cfg: QuantConfig, limit: float) -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    lin = nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    dense = torch.cuda.memory_allocated() - start
    layer = LoRALinear(lin, rank=1, alpha=1, quantize=cfg)
    del lin
    adapters = sum(p.numel() * p.element_size() for p in layer.adapter_parameters())
    torch.cuda.synchronize()
    used = torch.cuda.memory_allocated() - start - adapters
    assert used <= limit * dense, (used, dense)


class _Stack(nn.Module):
    """Six 4096 x 4096 projections: a dense bf16 base of 192 MiB next to activations of a few MiB."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({"proj": nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)})
            for _ in range(6)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer["proj"](x))
        return x


def test_cuda_qlora_forward_holds_no_dense_base_for_backward() -> None:
    """Between forward and backward a QLoRA model holds its 4-bit base and activations, not a dense copy."""
    model = _Stack()
    cfg = QuantConfig("nf4", double_quant=True, compute_dtype=torch.bfloat16)
    ft_peft.apply_lora(model, ["proj"], rank=8, quantize=cfg)
    ft_peft.set_trainable(model)
    dense = 6 * 4096 * 4096 * 2
    x = torch.randn(2, 64, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def held() -> int:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        y = model(x)
        torch.cuda.synchronize()
        used = torch.cuda.memory_allocated() - before
        y.float().sum().backward()
        return used

    lean = held()
    assert lean < 0.25 * dense, (lean, dense)
    # Wrong variant: the plain autograd path keeps every dequantised weight until the backward.
    for _, layer in ft_peft.lora_modules(model):
        layer._quantized_linear = lambda t, bias, layer=layer: nn.functional.linear(  # type: ignore[method-assign]
            t, layer.dense_weight(t.dtype), bias
        )
    assert held() >= dense
