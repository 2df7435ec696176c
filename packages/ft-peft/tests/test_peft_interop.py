"""Adapters cross between ft and PEFT on a transformers LlamaForCausalLM with awkward shapes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft_support import randomize_adapters, tiny_llama
from safetensors.torch import load_file, save_file

import ft_peft
from ft_peft.errors import AdapterFormatError, AdapterShapeError

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 131, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_llama()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_ft_adapter_loads_in_peft(base, input_ids, tmp_path: Path, use_dora: bool) -> None:
    model = copy.deepcopy(base)
    names = ft_peft.apply_lora(model, ALL, rank=4, alpha=8, use_dora=use_dora)
    assert len(names) == 14
    randomize_adapters(model)
    expected = _logits(model, input_ids)
    assert not torch.allclose(expected, _logits(base, input_ids), **TOL)  # the adapter matters
    ft_peft.save_adapter(model, tmp_path, base_model_name_or_path="org/tiny-llama")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["base_model_name_or_path"] == "org/tiny-llama"
    assert sorted(config["target_modules"]) == sorted(ALL)
    assert (config["r"], config["lora_alpha"], config["use_dora"]) == (4, 8, use_dora)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(_logits(peft_model, input_ids), expected, **TOL)

    # Wrong variant: the same file with another alpha must not reproduce the logits.
    config["lora_alpha"] = 16
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    wrong = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert not torch.allclose(_logits(wrong, input_ids), expected, **TOL)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_peft_adapter_loads_in_ft(base, input_ids, tmp_path: Path, use_dora: bool) -> None:
    config = LoraConfig(
        target_modules=["q_proj", "v_proj", "down_proj"],
        r=3,
        lora_alpha=5,
        use_dora=use_dora,
        use_rslora=True,
    )
    peft_model = get_peft_model(copy.deepcopy(base), config)
    randomize_adapters(peft_model, seed=4)
    peft_model.save_pretrained(tmp_path)
    expected = _logits(peft_model.eval(), input_ids)

    model = copy.deepcopy(base)
    names = ft_peft.load_adapter(model, tmp_path)
    assert sorted(names) == sorted(
        f"model.layers.{i}.{m}"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    )
    torch.testing.assert_close(_logits(model, input_ids), expected, **TOL)

    # Wrong variant: ignoring use_rslora (alpha / r instead of alpha / sqrt(r)) must be visible.
    for _, layer in ft_peft.lora_modules(model):
        layer.use_rslora = False
    assert not torch.allclose(_logits(model, input_ids), expected, **TOL)


def test_partial_targets_and_rank_pattern_round_trip(base, input_ids, tmp_path: Path) -> None:
    # Only layer 0's q_proj (rank 2) and every v_proj (rank 5): leaf names would select too much.
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, [re.compile(r"model\.layers\.0\.self_attn\.q_proj")], rank=2, alpha=3)
    ft_peft.apply_lora(model, ["v_proj"], rank=5, alpha=3)
    randomize_adapters(model)
    expected = _logits(model, input_ids)
    ft_peft.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert isinstance(config["target_modules"], str)  # a regex naming exactly the wrapped layers
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    wrapped = {n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.endswith("proj")}
    assert len(wrapped) == 3
    torch.testing.assert_close(_logits(peft_model, input_ids), expected, **TOL)
    again = copy.deepcopy(base)
    ft_peft.load_adapter(again, tmp_path)
    torch.testing.assert_close(_logits(again, input_ids), expected, **TOL)


def test_hf_state_dict_loads_into_wrapped_model(base, input_ids) -> None:
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ALL, rank=4, use_dora=True)
    hf_sd = base.state_dict()
    assert set(hf_sd) <= set(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    result = model.load_state_dict(hf_sd, strict=False)
    assert result.unexpected_keys == []
    assert all(re.search(r"lora_(A|B)\.weight$|lora_magnitude_vector$", k) for k in result.missing_keys)
    for _, layer in ft_peft.lora_modules(model):
        layer.reset_adapter_parameters()
    torch.testing.assert_close(_logits(model, input_ids), _logits(base, input_ids), **TOL)


def test_adapter_with_wrong_shapes_is_refused_untouched(base, tmp_path: Path) -> None:
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ["q_proj"], rank=4)
    ft_peft.save_adapter(model, tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(4, 47)
    save_file(tensors, weights)
    fresh = copy.deepcopy(base)
    with pytest.raises(
        AdapterShapeError, match=r"model\.layers\.1\.self_attn\.q_proj: lora_A\.weight .*\(4, 47\)"
    ):
        ft_peft.load_adapter(fresh, tmp_path)
    assert not list(ft_peft.lora_modules(fresh))  # nothing was wrapped


def test_adapter_config_mismatch_with_wrapped_model(base, tmp_path: Path) -> None:
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ["q_proj"], rank=4, alpha=8)
    ft_peft.save_adapter(model, tmp_path)
    other = copy.deepcopy(base)
    ft_peft.apply_lora(other, ["q_proj"], rank=4, alpha=4)
    with pytest.raises(
        AdapterFormatError, match=r"lora_alpha=8.* layer model\.layers\.0\.self_attn\.q_proj has 4"
    ):
        ft_peft.load_adapter(other, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=r"adapter_config\.json: peft_type='IA3'"):
        ft_peft.load_adapter(copy.deepcopy(base), tmp_path)
    with pytest.raises(AdapterFormatError, match=r"adapter config not found"):
        ft_peft.load_adapter(copy.deepcopy(base), tmp_path / "missing")


def test_failed_save_leaves_nothing_behind(base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ["q_proj"], rank=2)
    out = tmp_path / "adapter"

    def disk_full(fd: int) -> None:  # the weights' bytes are written, syncing them fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ft_peft.save_adapter(model, out)
    assert list(out.iterdir()) == []  # no temporary file, no config without weights
    monkeypatch.undo()
    ft_peft.save_adapter(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
