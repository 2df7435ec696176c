"""Hand-written Hub-style Gemma 2 config.json files (the keys released checkpoints carry) against
transformers reading the same file; absent keys take transformers' defaults, ``null`` caps turn off."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from family_support import check_logits, reference_from_handwritten, variant
from family_table import GEMMA2

import ft_models
from ft_models import ConfigError, DecoderConfig, EagerKernel, SDPAKernel, soft_cap

# Shaped like google/gemma-2-2b's config.json (both activation keys, soft-cap keys, hybrid cache),
# scaled down: 4 layers, odd vocabulary, head_dim 24 != 64 / 4, GQA 2:1.
HANDWRITTEN: dict[str, Any] = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 6.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": [1, 107],
    "final_logit_softcapping": 4.0,
    "head_dim": 24,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 104,
    "max_position_embeddings": 8192,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 24,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 6,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 101,
}


@torch.no_grad()
def test_handwritten_config_with_soft_cap_keys(tmp_path: Path) -> None:
    hf = reference_from_handwritten(HANDWRITTEN, tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    c = model.config
    assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (6.0, 4.0)
    assert [c.window(i) for i in range(4)] == [6, None, 6, None]  # sliding on even layers
    assert c.tie_word_embeddings  # Gemma's default when the key is absent
    assert model.lm_head.weight is model.model.embed_tokens.weight
    check_logits(
        hf,
        model,
        {
            "soft-cap keys ignored": variant(
                model, attn_logit_softcapping=None, final_logit_softcapping=None
            ),
            "attn cap ignored": variant(model, attn_logit_softcapping=None),
            "window+1": variant(model, sliding_window=7),
        },
    )


def test_absent_keys_take_transformers_defaults() -> None:
    from transformers import Gemma2Config

    minimal = {
        k: HANDWRITTEN[k]
        for k in (
            "model_type",
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
    }
    ours = DecoderConfig.from_hf_dict(minimal)
    theirs = Gemma2Config(**{k: v for k, v in minimal.items() if k != "model_type"})
    assert ours.attn_logit_softcapping == theirs.attn_logit_softcapping == 50.0
    assert ours.final_logit_softcapping == theirs.final_logit_softcapping == 30.0
    assert ours.query_pre_attn_scalar == theirs.query_pre_attn_scalar
    assert ours.head_dim == theirs.head_dim
    assert ours.sliding_window == theirs.sliding_window
    assert list(ours.layer_types or ()) == theirs.layer_types
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.hidden_act == theirs.hidden_activation
    off = DecoderConfig.from_hf_dict(
        {**minimal, "attn_logit_softcapping": None, "final_logit_softcapping": None}
    )
    assert off.attn_logit_softcapping is None
    assert off.final_logit_softcapping is None
    # Written back, the config round-trips and transformers reads the same values.
    written = off.to_hf_dict()
    assert DecoderConfig.from_hf_dict(written) == off
    reread = Gemma2Config(**{k: v for k, v in written.items() if k not in ("model_type", "architectures")})
    assert reread.attn_logit_softcapping is None
    assert reread.final_logit_softcapping is None


@pytest.mark.parametrize("name", list(GEMMA2.cases))
def test_builder_picks_the_capping_kernel_and_refuses_others(name: str) -> None:
    c = DecoderConfig.from_hf_dict(GEMMA2.cases[name])
    with pytest.raises(ConfigError, match=r"attn_logit_softcapping=.*SDPAKernel"):
        ft_models.build_gemma2(c, kernel=SDPAKernel())
    with pytest.raises(ConfigError, match="attn_logit_softcapping"):
        ft_models.build_gemma2(c, kernel=EagerKernel())
    custom = ft_models.build_gemma2(c, kernel=EagerKernel(score_mod=soft_cap(c.attn_logit_softcapping)))
    assert isinstance(custom.model.layers[1].self_attn.kernel, EagerKernel)
    uncapped = ft_models.build_gemma2(dataclasses.replace(c, attn_logit_softcapping=None))
    assert isinstance(uncapped.model.layers[0].self_attn.kernel, SDPAKernel)
