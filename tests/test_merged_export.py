"""The merged export streams, and writes what the in-memory merge wrote byte for byte.

An ft model with adapters in the recipes' storage (a bf16 frozen base, or an NF4 one, beside fp32 LoRA /
DoRA adapters with non-zero B), exported two ways into HF directories sharded at a small size:

* the way the LoRA recipe exported before: ``merge_adapters`` on the model, ``model.to(float32)``,
  ``save_pretrained`` (every merged layer dense and the whole model in fp32 at once);
* the streamed way it exports now (``ft_recipes.steps.save_merged_hf_dir``: ``merged_state_dict``
  written by ``write_pretrained`` in fp32, one merged layer at a time).

Every file is byte-identical (weights, index, config), the streamed export leaves the model untouched,
and transformers loads it with the merged model's logits. Wrong variant: merged weights written without
the rounding to the layer's dtype that the merge applies give other bytes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM

import ft_data
import ft_models
import ft_peft
from ft_recipes import steps

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir, _ = make_tiny(tmp_path_factory.mktemp("merged"))
    return model_dir


def _adapted(model_dir: Path, options: dict[str, object]) -> ft_models.CausalLM:
    model = ft_models.from_pretrained(model_dir, dtype=torch.float32)
    ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8, **options)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in ft_peft.lora_modules(model):
            for p in layer.adapter_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    ft_peft.set_trainable(model)
    for p in model.parameters():  # bf16-mixed storage: the frozen base in bf16
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(torch.bfloat16)
    return model


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    "options", [{}, {"use_dora": True}, {"quantize": "nf4"}], ids=["lora", "dora", "qlora-nf4"]
)
def test_streamed_merged_export_is_byte_identical(
    tiny: Path, tmp_path: Path, options: dict[str, object]
) -> None:
    model = _adapted(tiny, options)
    tokenizer = ft_data.load_tokenizer(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    old = copy.deepcopy(model)
    ft_peft.merge_adapters(old)
    old.to(torch.float32)
    old_dir = steps.save_hf_dir(old, tokenizer, tmp_path / "old")
    new_dir = steps.save_merged_hf_dir(model, tokenizer, tmp_path / "new")
    assert _files(new_dir) == _files(old_dir)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # adapters still there

    hf = AutoModelForCausalLM.from_pretrained(new_dir, dtype=torch.float32).eval()
    ids = torch.arange(5, 30).reshape(1, -1)
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, old(ids), rtol=1e-5, atol=1e-5)

    # Wrong variant: the fp32 merge without the layer-dtype rounding is other bytes.
    unrounded = [
        (k, v.layer.merged_weight() if isinstance(v, ft_peft.MergedWeight) else v)
        for k, v in ft_peft.merged_state_dict(model)
    ]
    wrong = ft_models.write_pretrained(model.config, unrounded, tmp_path / "wrong", dtype=torch.float32)
    assert _files(wrong)["model.safetensors"] != _files(old_dir)["model.safetensors"]


def test_sharded_streamed_export_matches(tiny: Path, tmp_path: Path) -> None:
    model = _adapted(tiny, {})
    old = copy.deepcopy(model)
    ft_peft.merge_adapters(old)
    old.to(torch.float32)
    old_dir = ft_models.save_pretrained(old, tmp_path / "old", max_shard_size="60KB")
    new_dir = ft_models.write_pretrained(
        model.config,
        ft_peft.merged_state_dict(model),
        tmp_path / "new",
        dtype=torch.float32,
        max_shard_size="60KB",
    )
    files = _files(new_dir)
    assert len([n for n in files if n.endswith(".safetensors")]) > 2
    assert files == _files(old_dir)
