"""Qwen3 against transformers' Qwen3 (eager attention, fp32).

Cases: head_dim 24 with hidden 64 and 8 heads (not hidden / heads), GQA 4:1, untied; and a tied GQA 7:1
model with biases on all attention projections and a 6-token window on its upper two layers. Wrong
variants: the per-head q/k RMSNorm left out, the window off by one, and (for a config without
``head_dim``) the ``hidden / heads`` default, which cannot even load the checkpoint.
"""

from __future__ import annotations

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
    shape,
    variant,
)
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM, CheckpointError

WINDOW = 6
CASES: dict[str, dict[str, Any]] = {
    "gqa4-untied": {**shape("gqa4"), "model_type": "qwen3", "tie_word_embeddings": False},
    "gqa7-tied-bias-window": {
        **shape("gqa7"),
        "model_type": "qwen3",
        "tie_word_embeddings": True,
        "attention_bias": True,
        "use_sliding_window": True,
        "sliding_window": WINDOW,
        "max_window_layers": 1,
    },
}


def without_qk_norm(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    for layer in wrong.model.layers:
        layer.self_attn.q_norm = layer.self_attn.k_norm = None
    return wrong


def wrong_variants(model: CausalLM) -> dict[str, CausalLM]:
    out = {"no-qk-norm": without_qk_norm(model)}
    if model.config.sliding_window is not None:
        out["window+1"] = variant(model, sliding_window=model.config.sliding_window + 1)
    return out


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PreTrainedModel, CausalLM]:
    hf = make_reference(CASES[request.param], seed=len(request.param))
    return hf, ft_from_reference(hf, tmp_path_factory.mktemp(request.param))


def test_module_paths_and_shapes(case: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = case
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == theirs  # same names (q_norm / k_norm included), same shapes
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (model.config.head_dim,)
    assert model.config.head_dim != model.config.hidden_size // model.config.num_attention_heads


def test_logits_match_transformers(case: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = case
    check_logits(hf, model, wrong_variants(model))


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padded_batch_matches_transformers(case: tuple[PreTrainedModel, CausalLM], left: bool) -> None:
    hf, model = case
    check_padded(hf, model, left=left)


def test_saved_directory_loads_in_transformers(
    case: tuple[PreTrainedModel, CausalLM], tmp_path: Path
) -> None:
    hf, model = case
    on = model.config.sliding_window is not None
    check_saved_loads_in_transformers(
        hf,
        model,
        tmp_path / "saved",
        expect={"model_type": "qwen3", "head_dim": model.config.head_dim, "use_sliding_window": on},
        # Wrong variant: q/k norm eps a thousand times larger is a config transformers honours.
        break_config={"rms_norm_eps": 1.0},
    )


@torch.no_grad()
def test_cache_decoding_across_the_window(tmp_path: Path) -> None:
    hf = make_reference(CASES["gqa7-tied-bias-window"], std=0.3, seed=4, norms=False)
    model = ft_from_reference(hf, tmp_path)
    check_cache_decoding(
        hf,
        model,
        {"window+1": variant(model, sliding_window=WINDOW + 1), "no-qk-norm": without_qk_norm(model)},
    )


def test_head_dim_defaults_to_128_like_transformers(tmp_path: Path) -> None:
    """Without a head_dim key Qwen3 uses 128, not hidden / heads: a checkpoint of the other shape fails."""
    config = {**CASES["gqa4-untied"]}
    del config["head_dim"]
    hf = make_reference(config, seed=1)
    assert hf.config.head_dim == 128
    hf.save_pretrained(tmp_path)
    assert ft_models.from_pretrained(tmp_path).config.head_dim == 128
    parsed = ft_models.DecoderConfig.from_hf_dict(config)
    assert parsed.head_dim == 128
    # Wrong variant: head_dim = hidden / heads (8), the shared default, does not fit the tensors.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(
        (tmp_path / "config.json").read_text().replace('"head_dim": 128', '"head_dim": 8')
    )
    (bad / "model.safetensors").symlink_to(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has shape \(128,\), the model expects \(8,\)"):
        ft_models.from_pretrained(bad)
