"""QLoRA: quantised frozen base against bitsandbytes (numerics reference) and PEFT on top of it."""

from __future__ import annotations

import copy
import sys

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft_support import Block, randomize_adapters
from torch import nn

import ft_peft
from ft_peft import LoRALinear, QuantConfig
from ft_peft.errors import MergedStateError, MissingExtraError

SHAPES = [(192, 576), (37, 23)]  # (d_in, d_out): a real-model-like one and an odd one (odd n)


def _linear(d_in: int, d_out: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out).to(dtype)
    with torch.no_grad():
        lin.weight.normal_(0, 0.5)
    return lin


def _bnb_linear4bit(lin: nn.Linear, kind: str, double_quant: bool, compute: torch.dtype) -> nn.Module:
    ref = bnb.nn.Linear4bit(
        lin.in_features,
        lin.out_features,
        bias=True,
        compute_dtype=compute,
        quant_type=kind,
        compress_statistics=double_quant,
    )
    ref.weight = bnb.nn.Params4bit(
        lin.weight.data.clone(),
        requires_grad=False,
        quant_type=kind,
        compress_statistics=double_quant,
        blocksize=64,
    )
    ref.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    return ref.to("cpu")  # bitsandbytes quantises when the parameter is moved to a device


@pytest.mark.parametrize(("d_in", "d_out"), SHAPES, ids=["576x192", "23x37"])
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True], ids=["single", "double"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_bnb_linear4bit_plus_lora(d_in, d_out, kind, double_quant, compute) -> None:
    lin = _linear(d_in, d_out, dtype=torch.bfloat16)
    ref = _bnb_linear4bit(lin, kind, double_quant, compute)
    layer = LoRALinear(
        copy.deepcopy(lin),
        rank=4,
        alpha=8,
        quantize=QuantConfig(kind, double_quant, 64, compute),
        name="proj",
    )
    randomize_adapters(layer)
    # The stored packed weight is bitsandbytes' own, byte for byte.
    assert torch.equal(layer.weight, ref.weight.data.reshape(-1))
    x = torch.randn(3, 5, d_in, generator=torch.Generator().manual_seed(2)).to(compute)
    with torch.no_grad():
        lora = layer.lora_B(layer.lora_A(x.float())) * layer.scaling
        expected = (ref(x) + lora).to(x.dtype)
        got = layer(x)
        tol = {"atol": 1e-5, "rtol": 1e-5} if compute == torch.float32 else {"atol": 0.0, "rtol": 0.0}
        torch.testing.assert_close(got, expected, **tol)
        # Wrong variant: the other 4-bit code book must not pass the same tolerance.
        other = _bnb_linear4bit(lin, "fp4" if kind == "nf4" else "nf4", double_quant, compute)
        wrong = (other(x) + lora).to(x.dtype)
        assert not torch.allclose(got.float(), wrong.float(), atol=max(tol["atol"], 1e-3), rtol=1e-3)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_outputs_and_gradients_equal_peft_on_linear4bit(use_dora: bool) -> None:
    base = Block()
    quantized = copy.deepcopy(base)
    quantized.proj = _bnb_linear4bit(base.proj, "nf4", False, torch.float32)
    peft_model = get_peft_model(
        quantized, LoraConfig(target_modules=["proj"], r=4, lora_alpha=6, use_dora=use_dora)
    )
    model = copy.deepcopy(base)
    ft_peft.apply_lora(
        model,
        ["proj"],
        rank=4,
        alpha=6,
        use_dora=use_dora,
        quantize=QuantConfig("nf4", compute_dtype=torch.float32),
    )
    ft_peft.set_trainable(model)
    randomize_adapters(model)
    theirs = peft_model.base_model.model.proj
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(model.proj.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(model.proj.lora_B.weight)
        if use_dora:
            theirs.lora_magnitude_vector["default"].weight.copy_(model.proj.lora_magnitude_vector)

    def run(m: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = torch.randn(4, 37, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = m(x)
        y.square().sum().backward()
        params = [p for n, p in sorted(m.named_parameters()) if "lora_" in n]
        return y.detach(), [x.grad, *[p.grad for p in params]]

    y_ft, g_ft = run(model)
    y_pf, g_pf = run(peft_model)
    torch.testing.assert_close(y_ft, y_pf, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_ft, g_pf, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Gradients reach only the adapters: the quantised base and the bias have none.
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if "lora_" in n}
    assert all(not p.is_floating_point() for n, p in model.proj.named_parameters() if n.startswith("weight"))
    # Wrong variant: the same adapters over an FP4 base must not match PEFT over NF4.
    wrong = copy.deepcopy(base)
    ft_peft.apply_lora(
        wrong,
        ["proj"],
        rank=4,
        alpha=6,
        use_dora=use_dora,
        quantize=QuantConfig("fp4", compute_dtype=torch.float32),
    )
    wrong.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" in k}, strict=False)
    y_wrong, _ = run(wrong)
    assert not torch.allclose(y_wrong, y_pf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("cfg", "limit"),
    [
        (QuantConfig("nf4"), 0.3),
        (QuantConfig("nf4", double_quant=True), 0.3),
        (QuantConfig("fp4"), 0.3),
        (QuantConfig("int8"), 0.55),
    ],
    ids=["nf4", "nf4-double", "fp4", "int8"],
)
def test_base_weight_bytes(cfg: QuantConfig, limit: float) -> None:
    lin = _linear(192, 576, dtype=torch.bfloat16)
    bf16_bytes = lin.weight.numel() * lin.weight.element_size()
    layer = LoRALinear(lin, rank=8, alpha=16, quantize=cfg)
    stored = {k: v for k, v in layer.state_dict().items() if k.startswith("weight")}
    ratio = ft_peft.quantized_nbytes(stored) / bf16_bytes
    assert ratio <= limit, ratio
    # Measured, not assumed: the dense weight no longer lives in the layer.
    assert all(t.dtype in (torch.uint8, torch.int8, torch.int32, torch.float32) for t in stored.values())
    assert ratio < 0.3 or cfg.kind == "int8"


@pytest.mark.parametrize(("d_in", "d_out"), SHAPES, ids=["576x192", "23x37"])
def test_int8_matches_bnb_rowwise_dequant(d_in: int, d_out: int) -> None:
    lin = _linear(d_in, d_out)
    layer = LoRALinear(
        copy.deepcopy(lin), rank=3, alpha=3, quantize=QuantConfig("int8", compute_dtype=torch.float32)
    )
    # bitsandbytes' own 8-bit weights (Int8Params) quantise from fp16.
    reference_param = bnb.nn.Int8Params(lin.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    reference_param = reference_param.to("cpu")
    assert reference_param.dtype == torch.int8
    assert torch.equal(layer.weight, reference_param.data)
    codes, stats, _ = bnbf.int8_vectorwise_quant(lin.weight.data.half())
    reference = bnbf.int8_vectorwise_dequant(codes, stats)
    torch.testing.assert_close(stats, reference_param.SCB, atol=0, rtol=0)
    assert torch.equal(layer.dense_weight(torch.float32), reference)
    x = torch.randn(6, d_in)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x), nn.functional.linear(x, reference, lin.bias), atol=1e-6, rtol=1e-6
        )
    # Wrong variant: column-wise scales (quantising the transpose) are a different weight.
    codes_t, stats_t, _ = bnbf.int8_vectorwise_quant(lin.weight.data.t().contiguous().half())
    assert not torch.allclose(
        layer.dense_weight(torch.float32), bnbf.int8_vectorwise_dequant(codes_t, stats_t).t()
    )


@pytest.mark.parametrize("cfg", [QuantConfig("nf4", True), QuantConfig("int8")], ids=["nf4-double", "int8"])
def test_meta_construction_then_dense_checkpoint_load(cfg: QuantConfig) -> None:
    dense = Block()
    direct = copy.deepcopy(dense)
    ft_peft.apply_lora(direct, ["proj", "out"], rank=2, quantize=cfg)
    with torch.device("meta"):
        model = Block()
    ft_peft.apply_lora(model, ["proj", "out"], rank=2, quantize=cfg)
    model.to_empty(device="cpu")
    result = model.load_state_dict(
        dense.state_dict(), strict=False
    )  # dense HF-style weights quantise on load
    assert result.unexpected_keys == []
    assert {k for k in result.missing_keys} == {k for k in direct.state_dict() if "lora_" in k}
    direct_sd = direct.state_dict()
    for key, value in model.state_dict().items():
        if "lora_" not in key:
            assert value.shape == direct_sd[key].shape, key
            assert torch.equal(value, direct_sd[key]), key


def test_merge_adapters_dequantises_into_plain_linear() -> None:
    model = Block()
    ft_peft.apply_lora(
        model, ["proj"], rank=3, use_dora=True, quantize=QuantConfig("nf4", compute_dtype=torch.float32)
    )
    randomize_adapters(model)
    x = torch.randn(5, 37)
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(MergedStateError, match=r"proj: cannot merge into a nf4 base"):
        model.proj.merge()
    ft_peft.merge_adapters(model)
    assert type(model.proj) is nn.Linear
    assert model.proj.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_missing_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    model = Block()
    with pytest.raises(MissingExtraError, match=r"^proj: .*pip install 'ft-peft\[qlora\]'"):
        ft_peft.apply_lora(model, ["proj"], rank=2, quantize="nf4")
    assert type(model.proj) is nn.Linear  # nothing replaced
    ft_peft.apply_lora(model, ["proj"], rank=2)  # plain LoRA needs no bitsandbytes


@pytest.mark.parametrize("cfg", [QuantConfig("nf4", True), QuantConfig("int8")], ids=["nf4-double", "int8"])
def test_dtype_casts_leave_the_quantised_base_alone(cfg: QuantConfig) -> None:
    model = Block()
    ft_peft.apply_lora(model, ["proj"], rank=2, quantize=cfg)
    before = model.proj.dense_weight(torch.float32).clone()
    stored = {k: v.clone() for k, v in model.proj.state_dict().items() if k.startswith("weight")}
    model.to(torch.bfloat16)  # casts floating tensors only: adapters and bias become bf16
    assert model.proj.lora_A.weight.dtype == torch.bfloat16
    for key, value in model.proj.state_dict().items():
        if key.startswith("weight"):
            assert torch.equal(value, stored[key]), key
    assert torch.equal(model.proj.dense_weight(torch.float32), before)
    # Wrong variant: a float code book (as bitsandbytes' QuantState keeps it) would have been rounded.
    if cfg.double_quant:
        code = stored["weight_nested_code"].view(torch.float32)
        assert not torch.equal(code.to(torch.bfloat16).float(), code)
