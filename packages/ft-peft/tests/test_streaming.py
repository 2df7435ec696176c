"""Adapters for streaming: quantising a slice at a time, a layer built on meta filled by a loader, a
merged export described without merging.

* ``quantize_weight`` quantises row slices (whole 4-bit blocks each); its codes and statistics equal
  bitsandbytes quantising the whole weight (``functional.quantize_4bit``, ``int8_vectorwise_quant``),
  double quantisation included. Wrong variant: slices that split blocks give other statistics.
* A model built on the meta device, wrapped, then filled the way a loader does it (PyTorch's
  ``load_state_dict(..., assign=True)`` per layer, then ``init_after_load``) equals, bit for bit, the
  same model built on the CPU and wrapped with the same seed: quantised codes, DoRA magnitudes, A and B.
  Wrong variant: ``to_empty`` + ``reset_adapter_parameters`` draws other A's.
* ``merged_state_dict`` yields what ``merge_adapters`` leaves, computing each merged weight only when
  called, and leaves the model as it was. Wrong variant: the fp32 merged weight without the rounding to
  the layer's dtype that ``merge_adapters`` applies.
"""

from __future__ import annotations

import copy

import bitsandbytes.functional as bnbf
import pytest
import torch
from peft_support import Block, randomize_adapters
from torch import nn

import ft_peft
from ft_peft import LoRALinear, QuantConfig
from ft_peft._quant import quantize_weight

# More elements than one slice (2**22), and a width that is not a multiple of the block size.
BIG = [(2100, 2048), (4500, 1000)]


def _whole(w: torch.Tensor, cfg: QuantConfig) -> dict[str, torch.Tensor]:
    """bitsandbytes quantising the whole weight, in ft-peft's storage layout."""
    if cfg.kind == "int8":
        codes, stats, _ = bnbf.int8_vectorwise_quant(w.to(torch.float16))
        return {"": codes, "scale": stats.view(torch.int32)}
    packed, state = bnbf.quantize_4bit(
        w, blocksize=cfg.blocksize, quant_type=cfg.kind, compress_statistics=cfg.double_quant
    )
    if not cfg.double_quant:
        return {"": packed.reshape(-1), "absmax": state.absmax.view(torch.int32)}
    return {
        "": packed.reshape(-1),
        "absmax": state.absmax,
        "nested_absmax": state.state2.absmax.view(torch.int32),
        "nested_code": state.state2.code.view(torch.int32),
        "nested_offset": state.offset.reshape(()).view(torch.int32),
    }


@pytest.mark.parametrize("shape", BIG, ids=["2100x2048", "4500x1000"])
@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig("nf4"),
        QuantConfig("fp4"),
        QuantConfig("nf4", double_quant=True, blocksize=128),
        QuantConfig("int8"),
    ],
    ids=["nf4", "fp4", "nf4-double-128", "int8"],
)
def test_sliced_quantisation_equals_bitsandbytes_whole(shape: tuple[int, int], cfg: QuantConfig) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
    ours, ref = quantize_weight(w, cfg, "w"), _whole(w, cfg)
    assert ours.keys() == ref.keys()
    for key in ours:
        assert torch.equal(ours[key], ref[key]), key
    # From bf16 with dtype=float32: the codes of the upcast weight (what a loader hands a bf16 checkpoint).
    half = w.to(torch.bfloat16)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            quantize_weight(half, cfg, "w", dtype=torch.float32).values(), _whole(half.float(), cfg).values()
        )
    )


def test_slices_that_split_blocks_give_other_statistics() -> None:
    w = torch.randn(4500, 1000, generator=torch.Generator().manual_seed(0)) * 0.02
    rows = 3  # 3000 elements: not whole blocks of 64
    parts = [
        torch.ops.bitsandbytes.quantize_4bit.default(w[i : i + rows], 64, "nf4", torch.uint8)
        for i in range(0, 4500, rows)
    ]
    absmax = torch.cat([a for _, a in parts])
    ours = quantize_weight(w, QuantConfig("nf4"), "w")["absmax"].view(torch.float32)
    assert absmax.shape != ours.shape or not torch.equal(absmax, ours)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(96, 80)
        self.b = nn.Linear(80, 70, bias=False)
        self.head = nn.Linear(70, 5)


def _dense(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.to(torch.bfloat16) for k, v in Net().state_dict().items()}


def _streamed(options: dict[str, object], seed: int) -> nn.Module:
    """Built on meta, wrapped, then filled layer by layer as a loader does, adapters created after."""
    with torch.device("meta"):
        model = Net()
    ft_peft.apply_lora(model, ["a", "b"], rank=4, **options)
    dense = _dense()
    torch.manual_seed(seed)
    for key, value in dense.items():
        path, _, name = key.rpartition(".")
        result = model.get_submodule(path).load_state_dict({name: value.clone()}, strict=False, assign=True)
        assert result.unexpected_keys == []
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.init_after_load(torch.device("cpu"))
    return model


def _built(options: dict[str, object], seed: int) -> nn.Module:
    model = Net()
    model.load_state_dict({k: v.float() for k, v in _dense().items()})  # a bf16 checkpoint, loaded in fp32
    torch.manual_seed(seed)
    ft_peft.apply_lora(model, ["a", "b"], rank=4, **options)
    return model


OPTIONS = {
    "lora": {},
    "dora": {"use_dora": True},
    "nf4-double": {"quantize": QuantConfig("nf4", double_quant=True)},
    "int8-dora": {"quantize": "int8", "use_dora": True},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_meta_built_layer_filled_by_a_loader_equals_one_built_on_cpu(name: str) -> None:
    streamed, built = _streamed(OPTIONS[name], seed=3), _built(OPTIONS[name], seed=3)
    ours, ref = streamed.state_dict(), built.state_dict()
    assert list(ours) == list(ref)
    for key in ref:
        # The unquantised base keeps the checkpoint's bf16 (a loader casts it to what the model declares).
        expected = (
            ref[key].to(ours[key].dtype) if key.endswith(("a.weight", "a.bias", "b.weight")) else ref[key]
        )
        assert torch.equal(ours[key], expected), key
    assert all(p.requires_grad for n, p in streamed.named_parameters() if "lora_" in n)


def test_naive_meta_init_draws_other_adapters() -> None:
    with torch.device("meta"):
        model = Net()
    ft_peft.apply_lora(model, ["a", "b"], rank=4)
    model.to_empty(device="cpu")
    model.load_state_dict({k: v.float() for k, v in _dense().items()}, strict=False)
    torch.manual_seed(3)
    for _, layer in ft_peft.lora_modules(model):
        layer.reset_adapter_parameters()
    built = _built({}, seed=3)
    assert not torch.equal(model.a.lora_A.weight, built.a.lora_A.weight)


@pytest.mark.parametrize(
    "options",
    [{}, {"use_dora": True}, {"quantize": QuantConfig("nf4", compute_dtype=torch.bfloat16)}],
    ids=["lora", "dora", "nf4"],
)
def test_merged_state_dict_is_what_merge_adapters_leaves(options: dict[str, object]) -> None:
    model = Block()
    ft_peft.apply_lora(model, ["proj", "out"], rank=3, **options)
    randomize_adapters(model)
    for p in model.parameters():  # a bf16 frozen base beside fp32 adapters (bf16-mixed storage)
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = ft_peft.merged_state_dict(model)
    assert any(isinstance(v, ft_peft.MergedWeight) for _, v in pairs)  # described, not yet computed
    merged = copy.deepcopy(model)
    ft_peft.merge_adapters(merged)
    expected = merged.state_dict()
    produced = {k: v if isinstance(v, torch.Tensor) else v() for k, v in pairs}
    assert list(produced) == list(expected)
    for key, value in expected.items():
        assert value.dtype == produced[key].dtype, key
        assert torch.equal(produced[key], value), key
    for key, value in pairs:
        if isinstance(value, ft_peft.MergedWeight):
            assert (tuple(value.shape), value.dtype) == (tuple(expected[key].shape), expected[key].dtype)
            # Wrong variant: the fp32 merge without merge_adapters' rounding to the layer's dtype.
            assert not torch.equal(value.layer.merged_weight(), expected[key].float())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model keeps its adapters
    assert len(list(ft_peft.lora_modules(model))) == 2
