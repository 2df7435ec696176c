"""apply_lora's matching rules (exact, suffix, regex) and its one-line errors for bad input."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft_support import Block, tiny_llama

import ft_peft
from ft_peft.errors import InvalidRankError, TargetNotFoundError, UnsupportedQuantizationError


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_llama()


def _peft_targets(model: torch.nn.Module, target_modules) -> list[str]:
    """Which layers PEFT wraps for the same target_modules (the reference for matching)."""
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules=target_modules, r=2))
    prefix = "base_model.model."
    return sorted(
        n[len(prefix) :] for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "lora_" not in n
    )


@pytest.mark.parametrize(
    "targets",
    [
        ["q_proj", "down_proj"],
        ["self_attn.v_proj"],
        ["model.layers.1.mlp.up_proj"],
        r"model\.layers\.0\..*_proj",
        r".*\.(k|o)_proj",
    ],
    ids=["suffixes", "dotted-suffix", "exact", "regex-layer0", "regex-alternation"],
)
def test_matching_agrees_with_peft(llama, targets) -> None:
    model = copy.deepcopy(llama)
    names = ft_peft.apply_lora(model, targets, rank=2)
    assert sorted(names) == _peft_targets(llama, targets)
    assert sorted(n for n, _ in ft_peft.lora_modules(model)) == sorted(names)


def test_suffix_matches_whole_components_only(llama) -> None:
    # "proj" is not a suffix component of "q_proj": matching it would silently wrap nothing intended.
    with pytest.raises(
        TargetNotFoundError, match=r"LlamaForCausalLM: target module 'proj' matches no nn\.Linear"
    ):
        ft_peft.apply_lora(copy.deepcopy(llama), ["q_proj", "proj"], rank=2)
    # Wrong variant: a substring rule would have matched every projection.
    assert sum("proj" in n for n, m in llama.named_modules() if isinstance(m, torch.nn.Linear)) == 14


def test_compiled_pattern_entries_and_no_double_wrapping() -> None:
    model = Block()
    assert ft_peft.apply_lora(model, [re.compile(r"pr.j")], rank=2) == ["proj"]
    # The adapter's own A/B projections are not linear layers to wrap again.
    with pytest.raises(TargetNotFoundError, match=r"Block: target module 'lora_A' matches no nn\.Linear"):
        ft_peft.apply_lora(model, ["lora_A"], rank=1)
    with pytest.raises(
        TargetNotFoundError, match=r"Block: target_modules regex 'proj' matches no nn\.Linear"
    ):
        ft_peft.apply_lora(model, "proj", rank=1)


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        (0, r"model\.layers\.0\.self_attn\.q_proj: rank 0 must be an integer in \[1, 48\] for a 60x48 layer"),
        (21, r"model\.layers\.0\.self_attn\.k_proj: rank 21 must be an integer in \[1, 20\]"),
        (2.5, r"rank 2\.5 must be an integer"),
    ],
)
def test_bad_rank_names_module_and_value(llama, rank, message) -> None:
    model = copy.deepcopy(llama)
    with pytest.raises(InvalidRankError, match=message):
        ft_peft.apply_lora(model, ["q_proj", "k_proj"], rank=rank)
    assert not list(ft_peft.lora_modules(model))  # all or nothing
    assert all(p.requires_grad for p in model.parameters())  # not even frozen


def test_bad_quantize_kind_names_module_and_value() -> None:
    with pytest.raises(UnsupportedQuantizationError, match=r"^proj: unknown quantize kind 'nf3'"):
        ft_peft.apply_lora(Block(), ["proj"], rank=2, quantize="nf3")


def test_half_precision_base_keeps_fp32_adapters_like_peft() -> None:
    torch.manual_seed(0)
    base = Block().to(torch.bfloat16)
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ["proj", "out"], rank=4, alpha=8)
    assert model.proj.lora_A.weight.dtype == torch.float32
    assert model.proj.weight.dtype == torch.bfloat16
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(target_modules=["proj", "out"], r=4, lora_alpha=8)
    )
    with torch.no_grad():
        for name in ("proj", "out"):
            theirs = peft_model.base_model.model.get_submodule(name)
            assert theirs.lora_A["default"].weight.dtype == torch.float32
            theirs.lora_A["default"].weight.copy_(model.get_submodule(name).lora_A.weight)
            theirs.lora_B["default"].weight.normal_()
            model.get_submodule(name).lora_B.weight.copy_(theirs.lora_B["default"].weight)
        x = torch.randn(3, 37).to(torch.bfloat16)
        ours, reference = model(x), peft_model(x)
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours, reference, atol=0, rtol=0)
        # Wrong variant: adapters kept in bf16 round differently.
        low = copy.deepcopy(base)
        ft_peft.apply_lora(low, ["proj", "out"], rank=4, alpha=8, adapter_dtype=torch.bfloat16)
        low.load_state_dict(model.state_dict())
        assert not torch.equal(low(x), reference)
