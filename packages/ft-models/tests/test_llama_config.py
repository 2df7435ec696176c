"""config.json parsing: both rope schemas, hand-written Hub configs against transformers, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from llama_support import hf_from_handwritten
from transformers import LlamaConfig

import ft_models
from ft_models import ConfigError, DecoderConfig, RopeConfig

# Hub-style files as people write them: rope_theta + rope_scaling (both type keys), no head_dim,
# rope_scaling null, torch_dtype. Shapes: GQA 4:1 / 7:1, head_dim != hidden / heads, odd vocab.
HANDWRITTEN: dict[str, tuple[dict[str, Any], RopeConfig]] = {
    "llama3.1-style": (
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": 131,
            "hidden_size": 64,
            "intermediate_size": 112,
            "num_hidden_layers": 3,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 20,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-05,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
                "rope_type": "llama3",
            },
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        },
        RopeConfig(theta=500000.0),
    ),
    "legacy-linear-tied": (
        {
            "model_type": "llama",
            "vocab_size": 97,
            "hidden_size": 56,
            "intermediate_size": 72,
            "num_hidden_layers": 3,
            "num_attention_heads": 7,
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-06,
            "rope_theta": 10000.0,
            "rope_scaling": {"type": "linear", "factor": 4.0},
            "tie_word_embeddings": True,
        },
        RopeConfig(theta=10000.0),
    ),
    "biases": (
        {
            "model_type": "llama",
            "vocab_size": 131,
            "hidden_size": 40,
            "intermediate_size": 88,
            "num_hidden_layers": 3,
            "num_attention_heads": 5,
            "num_key_value_heads": 5,
            "head_dim": 16,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_theta": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        },
        RopeConfig(theta=10000.0),
    ),
    "no-scaling": (
        {
            "model_type": "llama",
            "vocab_size": 97,
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "head_dim": 12,
            "rope_theta": 100000.0,
            "rope_scaling": None,
            "tie_word_embeddings": True,
        },
        RopeConfig(theta=10000.0),
    ),
}


@pytest.mark.parametrize("name", list(HANDWRITTEN))
def test_handwritten_hub_config_matches_transformers(name: str, tmp_path: Path) -> None:
    config, wrong_rope = HANDWRITTEN[name]
    hf = hf_from_handwritten(config, tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    wrong = ft_models.build_llama(dataclasses.replace(model.config, rope=wrong_rope)).eval()
    wrong.load_state_dict(model.state_dict())
    ids = torch.randint(0, config["vocab_size"], (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        got, bad = model(ids), wrong(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(bad, expected, rtol=0, atol=1e-5)


def test_both_rope_schemas_parse_alike() -> None:
    hub = HANDWRITTEN["llama3.1-style"][0]
    v5 = LlamaConfig(**{k: v for k, v in hub.items() if k not in ("architectures", "torch_dtype")})
    v5_dict = json.loads(v5.to_json_string())
    assert "rope_parameters" in v5_dict
    assert "rope_scaling" not in v5_dict
    a = DecoderConfig.from_hf_dict(hub)
    b = DecoderConfig.from_hf_dict(v5_dict)
    assert a.rope == b.rope == RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 16)
    assert dataclasses.replace(a, dtype=None, bos_token_id=None, eos_token_id=None) == dataclasses.replace(
        b, bos_token_id=None, eos_token_id=None
    )


@pytest.mark.parametrize("name", list(HANDWRITTEN))
def test_to_hf_dict_reads_back_in_transformers(name: str) -> None:
    ft = DecoderConfig.from_hf_dict(HANDWRITTEN[name][0])
    written = ft.to_hf_dict()
    assert "rope_theta" in written
    assert "rope_scaling" in written
    assert "rope_parameters" not in written
    hf = LlamaConfig.from_dict(written)
    reference = LlamaConfig.from_dict(HANDWRITTEN[name][0])
    legacy = {"type"}  # transformers keeps the old type key beside rope_type
    assert hf.rope_parameters == {k: v for k, v in reference.rope_parameters.items() if k not in legacy}
    assert hf.head_dim == reference.head_dim
    assert DecoderConfig.from_hf_dict(written) == ft


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.type"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
        ({"model_type": "mamba"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_bad_config_names_file_and_key(change: dict[str, Any], key: str, tmp_path: Path) -> None:
    config = {**HANDWRITTEN["llama3.1-style"][0], **change}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"{path}.*'{key}'"):
        DecoderConfig.from_file(path)


def test_config_errors_on_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        DecoderConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DecoderConfig.from_file(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="not a multiple"):
        DecoderConfig.from_hf_dict({**HANDWRITTEN["no-scaling"][0], "num_key_value_heads": 4})


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="llama9-1t"):
        ft_models.llama_config("llama9-1t")
