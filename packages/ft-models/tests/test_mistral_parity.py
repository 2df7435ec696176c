"""Mistral against transformers' Mistral (eager attention, fp32).

Cases: GQA 4:1, head_dim 24 != 64 / 8, untied, with a 6-token sliding window on 40-token inputs; and a
tied GQA 7:1 model with ``sliding_window: null`` (Mistral 7B v0.2 / v0.3). Wrong variants: the window
off by one, the window dropped, a window where the config has none. Cached decoding runs 16 tokens past
9-token prompts, so every step crosses the window boundary.
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
from ft_models import CausalLM

WINDOW = 6
CASES: dict[str, dict[str, Any]] = {
    "gqa4-window-untied": {
        **shape("gqa4"),
        "model_type": "mistral",
        "sliding_window": WINDOW,
        "tie_word_embeddings": False,
    },
    "gqa7-null-window-tied": {
        **shape("gqa7"),
        "model_type": "mistral",
        "sliding_window": None,
        "tie_word_embeddings": True,
        "rope_theta": 1e6,
    },
}


def wrong_variants(model: CausalLM) -> dict[str, CausalLM]:
    w = model.config.sliding_window
    if w is None:
        return {"window-where-none": variant(model, sliding_window=WINDOW)}
    return {
        "window+1": variant(model, sliding_window=w + 1),
        "no-window": variant(model, sliding_window=None),
    }


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PreTrainedModel, CausalLM]:
    hf = make_reference(CASES[request.param], seed=len(request.param))
    return hf, ft_from_reference(hf, tmp_path_factory.mktemp(request.param))


def test_every_layer_slides(case: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = case
    assert [layer.self_attn.window for layer in model.model.layers] == [hf.config.sliding_window] * 3


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
    w = model.config.sliding_window
    check_saved_loads_in_transformers(
        hf,
        model,
        tmp_path / "saved",
        expect={"model_type": "mistral", "sliding_window": w},
        break_config={"sliding_window": WINDOW if w is None else w + 1},
    )


@torch.no_grad()
def test_cache_decoding_across_the_window(tmp_path: Path) -> None:
    hf = make_reference(CASES["gqa4-window-untied"], std=0.3, seed=2, norms=False)
    model = ft_from_reference(hf, tmp_path)
    check_cache_decoding(
        hf,
        model,
        {
            "window+1": variant(model, sliding_window=WINDOW + 1),
            "no-window": variant(model, sliding_window=None),
        },
    )


def test_absent_window_key_means_4096_like_transformers() -> None:
    config = {**CASES["gqa4-window-untied"]}
    del config["sliding_window"]
    assert (
        ft_models.DecoderConfig.from_hf_dict(config).sliding_window
        == make_reference(config).config.sliding_window
    )
    assert ft_models.DecoderConfig.from_hf_dict({**config, "sliding_window": None}).sliding_window is None
