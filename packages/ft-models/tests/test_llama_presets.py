"""Size presets against published parameter counts and the real SmolLM2-135M-Instruct GGUF header."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from gguf import GGUFReader

import ft_models
from ft_models._assets import smollm2_gguf_path

# Parameter counts published with each model (model cards / release notes).
PUBLISHED = {
    "smollm2-135m": 134.5e6,
    "smollm2-360m": 361.8e6,
    "smollm2-1.7b": 1.711e9,
    "llama3.2-1b": 1.236e9,
    "llama3.2-3b": 3.213e9,
    "llama3.1-8b": 8.030e9,
    "llama3-8b": 8.030e9,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = ft_models.build_llama(ft_models.llama_config(name))
    n = sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.005, n


def test_smollm2_preset_matches_the_real_gguf() -> None:
    reader = GGUFReader(smollm2_gguf_path())
    fields = reader.fields

    def value(key: str) -> float:
        return float(fields[f"llama.{key}"].contents())

    preset = ft_models.llama_config("smollm2-135m")
    header = {
        "hidden_size": value("embedding_length"),
        "intermediate_size": value("feed_forward_length"),
        "num_hidden_layers": value("block_count"),
        "num_attention_heads": value("attention.head_count"),
        "num_key_value_heads": value("attention.head_count_kv"),
        "max_position_embeddings": value("context_length"),
        "vocab_size": len(fields["tokenizer.ggml.tokens"].data),
    }
    assert {k: getattr(preset, k) for k in header} == header
    assert preset.rope.theta == value("rope.freq_base")
    assert preset.tie_word_embeddings is not any(t.name == "output.weight" for t in reader.tensors)
    assert preset.rms_norm_eps == pytest.approx(value("attention.layer_norm_rms_epsilon"), rel=1e-6)
    # A wrong preset (the 360M shape) disagrees with the file.
    other = ft_models.llama_config("smollm2-360m")
    assert {k: getattr(other, k) for k in header} != header
    assert dataclasses.replace(preset, dtype="bfloat16").dtype == "bfloat16"
