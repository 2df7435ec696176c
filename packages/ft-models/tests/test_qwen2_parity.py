"""Qwen2 / Qwen2.5 against transformers' Qwen2 (eager attention, fp32).

Cases: a 4-layer model with the sliding window on (``max_window_layers`` = 2, so the two lower layers
attend fully and the upper two slide with a 7-token window on 40-token inputs), and a tied 3-layer model
configured like the released checkpoints (the window keys present, ``use_sliding_window: false``).
Wrong variants: the window off by one, the window on every layer (``max_window_layers`` ignored), the
window applied although ``use_sliding_window`` is false, the q/k/v bias dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from family_support import (
    check_cache_decoding,
    check_logits,
    check_padded,
    check_saved_loads_in_transformers,
    ft_from_reference,
    make_reference,
    reference_from_handwritten,
    shape,
    variant,
)
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM

WINDOW = 7
CASES: dict[str, dict[str, Any]] = {
    "window-mid-untied": {
        **shape("gqa4", num_hidden_layers=4),
        "model_type": "qwen2",
        "use_sliding_window": True,
        "sliding_window": WINDOW,
        "max_window_layers": 2,
        "tie_word_embeddings": False,
    },
    "released-tied": {
        **shape("gqa7"),
        "model_type": "qwen2",
        "use_sliding_window": False,
        "sliding_window": WINDOW,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
    },
}


def without_qkv_bias(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    with torch.no_grad():
        for layer in wrong.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.bias.zero_()
    return wrong


def wrong_variants(model: CausalLM) -> dict[str, CausalLM]:
    c = model.config
    out = {"no-qkv-bias": without_qkv_bias(model)}
    if c.sliding_window is not None:
        out["window+1"] = variant(model, sliding_window=c.sliding_window + 1)
        out["window-on-all-layers"] = variant(model, layer_types=None)
    else:
        types = tuple("sliding_attention" if i >= 1 else "full_attention" for i in range(c.num_hidden_layers))
        out["window-although-off"] = variant(model, sliding_window=WINDOW, layer_types=types)
    return out


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, PreTrainedModel, CausalLM]:
    hf = make_reference(CASES[request.param], seed=len(request.param))
    return request.param, hf, ft_from_reference(hf, tmp_path_factory.mktemp(request.param))


def test_config_read_as_transformers_reads_it(case: tuple[str, PreTrainedModel, CausalLM]) -> None:
    _, hf, model = case
    c = model.config
    assert c.model_type == "qwen2"
    assert c.head_dim == hf.config.head_dim
    assert [c.window(i) for i in range(c.num_hidden_layers)] == [
        layer.self_attn.sliding_window for layer in hf.model.layers
    ]
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None
    assert attn.o_proj.bias is None
    assert model.model.layers[0].mlp.up_proj.bias is None


def test_logits_match_transformers(case: tuple[str, PreTrainedModel, CausalLM]) -> None:
    _, hf, model = case
    check_logits(hf, model, wrong_variants(model))


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padded_batch_matches_transformers(case: tuple[str, PreTrainedModel, CausalLM], left: bool) -> None:
    _, hf, model = case
    check_padded(hf, model, left=left)


def test_saved_directory_loads_in_transformers(
    case: tuple[str, PreTrainedModel, CausalLM], tmp_path: Path
) -> None:
    _name, hf, model = case
    on = model.config.sliding_window is not None
    config = check_saved_loads_in_transformers(
        hf,
        model,
        tmp_path / "saved",
        expect={
            "model_type": "qwen2",
            "use_sliding_window": on,
            "tie_word_embeddings": hf.config.tie_word_embeddings,
        },
        # Wrong variant: the window switched on (or off) in the written config.
        break_config={
            "use_sliding_window": not on,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
            "layer_types": None,
        },
    )
    if on:
        assert config["max_window_layers"] == 2
        assert config["sliding_window"] == WINDOW


@torch.no_grad()
def test_cache_decoding_across_the_window(tmp_path: Path) -> None:
    hf = make_reference(CASES["window-mid-untied"], std=0.3, seed=5, norms=False)
    model = ft_from_reference(hf, tmp_path)
    check_cache_decoding(hf, model, {"window+1": variant(model, sliding_window=WINDOW + 1)})


HANDWRITTEN: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 131,
    "hidden_size": 56,
    "intermediate_size": 80,
    "num_hidden_layers": 3,
    "num_attention_heads": 7,
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": True,
    "sliding_window": 5,
    "max_window_layers": 1,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_cache": True,
    "attention_dropout": 0.0,
}


@torch.no_grad()
def test_handwritten_hub_config_with_window_keys(tmp_path: Path) -> None:
    hf = reference_from_handwritten(HANDWRITTEN, tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    assert model.config.window(0) is None
    assert model.config.window(1) == model.config.window(2) == 5
    assert model.config.rope.theta == 1e6
    ignored = variant(model, sliding_window=None)  # wrong: the window keys not read
    check_logits(hf, model, {"window-keys-ignored": ignored, "window+1": variant(model, sliding_window=6)})
    # Released configs: sliding_window present but switched off reads as no window at all.
    off = ft_models.DecoderConfig.from_hf_dict({**HANDWRITTEN, "use_sliding_window": False})
    assert [off.window(i) for i in range(3)] == [None] * 3
    default = ft_models.DecoderConfig.from_hf_dict(
        {**HANDWRITTEN, "sliding_window": None} | {"use_sliding_window": True}
    )
    assert default.sliding_window is None
    assert json.loads((tmp_path / "config.json").read_text())["max_window_layers"] == 1
