"""Gemma 2 blocks against transformers' modules: the ``1 + weight`` RMSNorm (also in bf16, where the
order of the product and the cast matters), GeGLU, and a fresh model's initialisation."""

from __future__ import annotations

import torch
from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP, Gemma2RMSNorm

import ft_models
from ft_models import GatedMLP, RMSNorm, UnitOffsetRMSNorm
from ft_models._mlp import ACTIVATIONS


@torch.no_grad()
def test_unit_offset_norm_matches_gemma2_in_fp32_and_bf16() -> None:
    g = torch.Generator().manual_seed(0)
    weight = 0.5 * torch.randn(40, generator=g)
    x = 3 * torch.randn(2, 7, 40, generator=g)
    theirs = Gemma2RMSNorm(40, eps=1e-6)
    ours = UnitOffsetRMSNorm(40, eps=1e-6)
    theirs.weight.copy_(weight)
    ours.weight.copy_(weight)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    plain = RMSNorm(40, eps=1e-6)  # wrong variant: the stored weight used as the gain (no +1)
    plain.weight.copy_(weight)
    assert not torch.allclose(plain(x), theirs(x), rtol=0, atol=1e-3)
    # bf16: product in fp32, then one cast (a cast before the product rounds twice).
    theirs16, ours16 = theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    x16 = x.to(torch.bfloat16)
    assert torch.equal(ours16(x16), theirs16(x16))
    plain16 = RMSNorm(40, eps=1e-6).to(torch.bfloat16)
    plain16.weight.copy_((1 + weight).to(torch.bfloat16))
    assert not torch.equal(plain16(x16), theirs16(x16))


@torch.no_grad()
def test_geglu_matches_gemma2_mlp() -> None:
    cfg = ft_models.gemma2_config("gemma2-2b", hidden_size=24, intermediate_size=40)
    theirs = Gemma2MLP(
        type("C", (), {"hidden_size": 24, "intermediate_size": 40, "hidden_activation": cfg.hidden_act})()
    )
    ours = GatedMLP(24, 40, activation=ACTIVATIONS[cfg.hidden_act])
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    swiglu = GatedMLP(24, 40)  # wrong variant: SiLU gate
    swiglu.load_state_dict(theirs.state_dict())
    assert not torch.allclose(swiglu(x), theirs(x), rtol=0, atol=1e-4)


def test_fresh_model_initialises_offset_norms_to_zero() -> None:
    config = ft_models.DecoderConfig.from_hf_dict(
        {
            "model_type": "gemma2",
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
        }
    )
    with torch.device("meta"):
        model = ft_models.build_model(config)
    model.to_empty(device="cpu")
    model.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, UnitOffsetRMSNorm)]
    assert len(norms) == 2 * 4 + 1  # four per layer and the final norm
    assert all(torch.equal(n.weight, torch.zeros_like(n.weight)) for n in norms)  # gain 1 + 0
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 97, (1, 9)))).all()
