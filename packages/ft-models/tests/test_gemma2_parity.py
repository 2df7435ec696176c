"""Gemma 2 against transformers' Gemma 2 (eager attention, fp32).

Cases: 4 layers (sliding, global, sliding, global), GQA 4:1 with head_dim 24 != 64 / 8, a 5-token window
on 40-token inputs, ``query_pre_attn_scalar`` 20 (not head_dim), attention and final soft-caps small
enough to bind (5 and 3), tied; and an untied GQA 7:1 variant with caps 8 / 4, a 7-token window and
explicit ``layer_types``. Wrong variants: attention soft-cap off, final soft-cap off, the norm without
its +1, the window off by one, no sqrt(d) embedding scale, the 1/sqrt(head_dim) scale.
"""

from __future__ import annotations

import dataclasses
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
    swapped,
    variant,
)
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM, ConfigError, EagerKernel, RMSNorm, SDPAKernel, UnitOffsetRMSNorm, soft_cap

CASES: dict[str, dict[str, Any]] = {
    "gqa4-tied": {
        **shape("gqa4", num_hidden_layers=4),
        "model_type": "gemma2",
        "sliding_window": 5,
        "query_pre_attn_scalar": 20,
        "attn_logit_softcapping": 5.0,
        "final_logit_softcapping": 3.0,
        "tie_word_embeddings": True,
    },
    "gqa7-untied-layer-types": {
        **shape("gqa7", num_hidden_layers=4),
        "model_type": "gemma2",
        "sliding_window": 7,
        "query_pre_attn_scalar": 10,
        "attn_logit_softcapping": 8.0,
        "final_logit_softcapping": 4.0,
        "tie_word_embeddings": False,
        "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
    },
}


def norm_without_offset(model: CausalLM) -> CausalLM:
    """Every Gemma norm replaced by a plain RMSNorm with the same stored weight (no ``1 +``)."""

    def replace(module: torch.nn.Module) -> torch.nn.Module | None:
        if not isinstance(module, UnitOffsetRMSNorm):
            return None
        plain = RMSNorm(module.weight.shape[0], module.eps)
        plain.weight = module.weight
        return plain

    return swapped(model, replace)


def without_embed_scale(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    wrong.model.embed_scale = 1.0
    return wrong


def wrong_variants(model: CausalLM) -> dict[str, CausalLM]:
    c = model.config
    assert c.sliding_window is not None
    return {
        "attn-cap-off": variant(model, attn_logit_softcapping=None),
        "final-cap-off": variant(model, final_logit_softcapping=None),
        "norm-without-+1": norm_without_offset(model),
        "window+1": variant(model, sliding_window=c.sliding_window + 1),
        "no-embed-scale": without_embed_scale(model),
        "head-dim-scale": variant(model, query_pre_attn_scalar=None),
    }


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PreTrainedModel, CausalLM]:
    hf = make_reference(CASES[request.param], seed=len(request.param))
    return hf, ft_from_reference(hf, tmp_path_factory.mktemp(request.param))


def test_structure_follows_transformers(case: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = case
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in hf.state_dict().items()
    }
    assert [layer.self_attn.window for layer in model.model.layers] == [
        layer.self_attn.sliding_window for layer in hf.model.layers
    ]
    kernel = model.model.layers[0].self_attn.kernel
    assert isinstance(kernel, EagerKernel)  # chosen automatically: SDPA cannot cap scores
    assert repr(kernel.score_mod) == f"soft_cap({hf.config.attn_logit_softcapping})"


def test_logits_match_transformers(case: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = case
    check_logits(hf, model, wrong_variants(model))


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padded_batch_matches_transformers(case: tuple[PreTrainedModel, CausalLM], left: bool) -> None:
    hf, model = case
    check_padded(hf, model, left=left)


@torch.no_grad()
def test_output_projection_applies_the_final_cap(case: tuple[PreTrainedModel, CausalLM]) -> None:
    """A chunked loss calls output_projection on hidden slices and must see capped logits."""
    hf, model = case
    ids = torch.randint(0, hf.config.vocab_size, (2, 21))
    hidden = model(ids, return_hidden=True)
    expected = hf(ids).logits
    chunks = torch.cat([model.output_projection(h) for h in hidden.split(8, dim=1)], dim=1)
    torch.testing.assert_close(chunks, expected, rtol=0, atol=1e-5)
    cap = hf.config.final_logit_softcapping
    assert chunks.abs().max() < cap
    assert not torch.allclose(model.lm_head(hidden), expected, rtol=0, atol=1e-5)  # wrong: uncapped


def test_saved_directory_loads_in_transformers(
    case: tuple[PreTrainedModel, CausalLM], tmp_path: Path
) -> None:
    hf, model = case
    c = model.config
    check_saved_loads_in_transformers(
        hf,
        model,
        tmp_path / "saved",
        expect={
            "model_type": "gemma2",
            "attn_logit_softcapping": c.attn_logit_softcapping,
            "final_logit_softcapping": c.final_logit_softcapping,
            "query_pre_attn_scalar": hf.config.query_pre_attn_scalar,
            "sliding_window": c.sliding_window,
            "layer_types": list(hf.config.layer_types),
            "hidden_activation": "gelu_pytorch_tanh",
        },
        break_config={"final_logit_softcapping": None},
    )


@torch.no_grad()
def test_cache_decoding_across_the_window(tmp_path: Path) -> None:
    # Untied: with a tied head and the sqrt(d)-scaled embedding a random model predicts its input token.
    config = {
        **CASES["gqa4-tied"],
        "tie_word_embeddings": False,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    }
    hf = make_reference(config, std=0.3, seed=3, norms=False)
    model = ft_from_reference(hf, tmp_path)
    check_cache_decoding(
        hf,
        model,
        {
            "window+1": variant(model, sliding_window=6),
            "attn-cap-off": variant(model, attn_logit_softcapping=None),
        },
    )


def test_kernel_choice(case: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = case
    c = model.config
    with pytest.raises(ConfigError, match=r"attn_logit_softcapping=.*SDPAKernel"):
        ft_models.build_gemma2(c, kernel=SDPAKernel())
    with pytest.raises(ConfigError, match="attn_logit_softcapping"):
        ft_models.build_gemma2(c, kernel=EagerKernel())
    custom = ft_models.build_gemma2(c, kernel=EagerKernel(score_mod=soft_cap(c.attn_logit_softcapping)))
    assert isinstance(custom.model.layers[1].self_attn.kernel, EagerKernel)
    uncapped = ft_models.build_gemma2(dataclasses.replace(c, attn_logit_softcapping=None))
    assert isinstance(uncapped.model.layers[0].self_attn.kernel, SDPAKernel)
