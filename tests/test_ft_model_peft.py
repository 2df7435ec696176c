"""An ft model with ft-peft adapters against transformers + PEFT on the same weights.

One adapter file serves both libraries because ft's module paths equal transformers': an adapter
trained on an ft model loads with `PeftModel.from_pretrained` on the transformers model, a PEFT
adapter loads into the ft model, and a merged ft model saved with `ft_models.save_pretrained`
loads in transformers with the adapted outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import ft_models
import ft_peft

TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATOL = 1e-5


def _hf_config() -> LlamaConfig:
    # Odd vocabulary, GQA 5:1, head_dim 12 != 40 / 5, untied output.
    cfg = LlamaConfig(
        vocab_size=89,
        hidden_size=40,
        intermediate_size=72,
        num_hidden_layers=3,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=12,
        max_position_embeddings=128,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    return cfg


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(_hf_config()).save_pretrained(directory)
    return directory


def _hf(base_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager").eval()


def _randomise_adapters(model: torch.nn.Module, seed: int) -> None:
    # B starts at zero (output unchanged at init); a trained adapter has non-zero B.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude_vector" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _ids() -> torch.Tensor:
    return torch.randint(0, 89, (2, 11), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_ft_adapter_loads_in_peft(base_dir: Path, tmp_path: Path, use_dora: bool) -> None:
    model = ft_models.from_pretrained(base_dir).eval()
    ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8.0, use_dora=use_dora)
    _randomise_adapters(model, seed=2)
    ft_peft.save_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    peft_model = PeftModel.from_pretrained(_hf(base_dir), tmp_path / "adapter").eval()
    ids = _ids()
    with torch.no_grad():
        ours, theirs = model(ids), peft_model(input_ids=ids).logits
        base = _hf(base_dir)(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # Wrong variant: the same comparison against the unadapted model must fail.
    assert (ours - base).abs().max() > 100 * ATOL


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_peft_adapter_loads_in_ft(base_dir: Path, tmp_path: Path, use_dora: bool) -> None:
    torch.manual_seed(3)
    peft_model = get_peft_model(
        _hf(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=use_dora)
    )
    _randomise_adapters(peft_model, seed=4)
    peft_model.save_pretrained(tmp_path / "adapter")
    model = ft_models.from_pretrained(base_dir).eval()
    ft_peft.load_adapter(model, tmp_path / "adapter")
    ids = _ids()
    with torch.no_grad():
        ours, theirs = model(ids), peft_model.eval()(input_ids=ids).logits
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
        # Wrong variant: with the adapters disabled, ft no longer matches.
        with ft_peft.disable_adapters(model):
            assert (model(ids) - theirs).abs().max() > 100 * ATOL


def test_merged_ft_model_saves_as_plain_transformers_checkpoint(base_dir: Path, tmp_path: Path) -> None:
    model = ft_models.from_pretrained(base_dir).eval()
    ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8.0)
    _randomise_adapters(model, seed=5)
    ids = _ids()
    with torch.no_grad():
        adapted = model(ids)
    merged = ft_peft.merge_adapters(model)
    assert sorted({name.rsplit(".", 1)[-1] for name in merged}) == sorted(TARGETS)
    assert not any("lora" in key for key in model.state_dict())
    ft_models.save_pretrained(model, tmp_path / "merged")
    with torch.no_grad():
        reloaded = _hf(tmp_path / "merged")(input_ids=ids).logits
        base = _hf(base_dir)(input_ids=ids).logits
    torch.testing.assert_close(reloaded, adapted, atol=ATOL, rtol=0)
    assert (reloaded - base).abs().max() > 100 * ATOL
