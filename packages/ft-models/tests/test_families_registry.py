"""Dispatch by ``model_type``: every family loads from transformers' own save through one entry point,
configs round-trip, and an unsupported ``model_type`` names the supported ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from family_support import make_reference, shape

import ft_models
from ft_models import ConfigError, DecoderConfig

MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}


@pytest.mark.parametrize("model_type", list(MODEL_TYPES))
def test_from_pretrained_dispatches_by_model_type(model_type: str, tmp_path: Path) -> None:
    hf = make_reference({**shape("gqa4", num_hidden_layers=2), "model_type": model_type})
    hf.save_pretrained(tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    assert model.config.model_type == model_type
    assert model.config.architecture == MODEL_TYPES[model_type] == type(hf).__name__
    written = model.config.to_hf_dict()
    assert written["architectures"] == [type(hf).__name__]
    assert DecoderConfig.from_hf_dict(written) == model.config  # Hub-style keys read back identically


def test_unsupported_model_type_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**shape("gqa4"), "model_type": "phi3"}))
    with pytest.raises(ConfigError) as err:
        ft_models.from_pretrained(tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert "'phi3'" in message
    assert "supported: gemma2, llama, mistral, qwen2, qwen3" in message
    config = ft_models.llama_config("smollm2-135m", model_type="phi3")
    with pytest.raises(ConfigError, match="'phi3' is not supported"):
        ft_models.build_model(config)


def test_preset_lookup_across_families() -> None:
    assert ft_models.preset_config("qwen2.5-7b").model_type == "qwen2"
    assert ft_models.preset_config("gemma2-9b", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match=r"qwen2\.5-7b"):  # the message lists the known names
        ft_models.preset_config("qwen9-1t")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model_type": "gemma2", "hidden_activation": "relu"}, "hidden_activation"),
        ({"model_type": "qwen2", "hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "gemma2", "layer_types": ["full_attention"]}, "layer_types"),
        (
            {"model_type": "qwen3", "layer_types": ["full_attention", "chunked", "full_attention"]},
            "layer_types",
        ),
        ({"model_type": "mistral", "sliding_window": 0}, "sliding_window"),
        ({"model_type": "gemma2", "use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ],
)
def test_bad_family_keys_name_file_and_key(change: dict[str, object], key: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**shape("gqa7"), **change}))
    with pytest.raises(ConfigError, match=rf"{path}.*{key}"):
        DecoderConfig.from_file(path)
