"""Building blocks against transformers: RMSNorm, RoPE frequencies, sliding windows, masks."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from llama_support import SHAPES, randomize
from transformers import LlamaConfig, MistralConfig, MistralForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import ft_models
from ft_models import AttentionMask, DecoderConfig, EagerKernel, RMSNorm, RopeConfig, SDPAKernel
from ft_models._rope import compute_inv_freq


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_transformers(dtype: torch.dtype) -> None:
    x = (torch.randn(3, 5, 40) * 7).to(dtype)
    ours, ref = RMSNorm(40, eps=1e-5), LlamaRMSNorm(40, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(1 + torch.randn(40) * 0.1)
        ref.weight.copy_(ours.weight)
        ours, ref = ours.to(dtype), ref.to(dtype)
        assert torch.equal(ours(x), ref(x))
        naive = ours.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)  # no fp32 upcast
        if dtype == torch.bfloat16:  # wrong variant: computing the statistic in bf16
            assert not torch.equal(naive, ref(x))


ROPE_CASES: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
}


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_inv_freq_matches_transformers(name: str) -> None:
    params = ROPE_CASES[name]
    hf = LlamaConfig(hidden_size=96, num_attention_heads=4, head_dim=40, rope_parameters=dict(params))
    if name == "default":
        expected = 1.0 / (params["rope_theta"] ** (torch.arange(0, 40, 2, dtype=torch.float) / 40))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[name](hf)
    config = DecoderConfig.from_hf_dict({**hf.to_dict(), "model_type": "llama"})
    assert torch.equal(compute_inv_freq(config.rope, 40), expected)
    if name != "default":  # wrong variant: the scaling ignored
        assert not torch.equal(
            compute_inv_freq(dataclasses.replace(config.rope, rope_type="default"), 40), expected
        )


@pytest.mark.parametrize("kernel", [SDPAKernel, EagerKernel])
@torch.no_grad()
def test_sliding_window_matches_mistral(kernel: type) -> None:
    """A window is a property of the attention layer; Mistral is Llama with a sliding window."""
    window = 6
    cfg = MistralConfig(
        **SHAPES["gqa4"], sliding_window=window, max_position_embeddings=128, rms_norm_eps=1e-5
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = MistralForCausalLM(cfg).eval()
    randomize(hf, std=0.1, seed=4)
    config = DecoderConfig.from_hf_dict({**hf.config.to_dict(), "model_type": "llama"})
    model = ft_models.build_llama(config, kernel=kernel()).eval()
    model.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 97, (2, 23))
    expected = hf(ids).logits
    for w, close in ((window, True), (window + 1, False), (None, False)):  # off-by-one and no window fail
        for layer in model.model.layers:
            layer.self_attn.window = w
        got = model(ids)
        assert torch.allclose(got, expected, rtol=0, atol=1e-5) is close, w


def test_mask_semantics() -> None:
    docs = torch.tensor([[-1, 0, 0, 1, 1, -1]])
    m = AttentionMask.for_sequence(6, docs, docs.device).dense()[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],  # pad: itself only
            [0, 1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],  # a new document does not see the previous one
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],  # trailing pad: itself only; nobody attends to pads
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expected)
    windowed = AttentionMask.for_sequence(4, None, docs.device).dense(window=2)[0, 0]
    assert torch.equal(
        windowed, torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]).bool()
    )
    assert AttentionMask.for_sequence(4, None, docs.device).is_plain_causal()
    assert not AttentionMask.for_sequence(4, docs[:, :4], docs.device).is_plain_causal()


def test_rope_config_round_trip_through_hub_keys() -> None:
    rope = RopeConfig("llama3", 500000.0, 8.0, 1.0, 4.0, 8192)
    scaling = rope.to_hf_scaling()
    assert scaling is not None
    assert scaling["rope_type"] == "llama3"
    assert RopeConfig(theta=1.0).to_hf_scaling() is None


def test_meta_build_materialises_with_reset_parameters() -> None:
    config = DecoderConfig.from_hf_dict(
        {**SHAPES["gqa7"], "model_type": "llama", "tie_word_embeddings": True}
    )
    with torch.device("meta"):
        model = ft_models.build_llama(config)
    model.to_empty(device="cpu")
    model.reset_parameters(std=0.3)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.rotary_emb.inv_freq, compute_inv_freq(config.rope, config.head_dim))
    assert all(torch.equal(layer.input_layernorm.weight, torch.ones(56)) for layer in model.model.layers)
    assert 0.25 < float(model.model.layers[0].mlp.up_proj.weight.detach().std()) < 0.35
    assert torch.isfinite(model(torch.randint(0, 131, (2, 9)))).all()
