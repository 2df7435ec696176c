"""Tiny ft models with awkward shapes shared by the training-utility tests (no tests here)."""

from __future__ import annotations

from typing import Any

import torch

import ft_models

# GQA 3:1 with head_dim 10 != 24 / 3, odd vocabulary; Gemma 2 with a small final soft-cap so it bites.
LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 97,
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "head_dim": 10,
    "rms_norm_eps": 1e-5,
}
GEMMA2: dict[str, Any] = {
    "model_type": "gemma2",
    "vocab_size": 89,
    "hidden_size": 20,
    "intermediate_size": 36,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 6,
    "sliding_window": 5,
    "final_logit_softcapping": 3.0,
    "attn_logit_softcapping": 20.0,
}


def tiny_model(config: dict[str, Any], *, seed: int = 0, std: float = 0.3) -> ft_models.CausalLM:
    """An fp32 model with weights of std ``std`` (large enough that logits and soft-caps matter)."""
    torch.manual_seed(seed)
    model = ft_models.build_model(ft_models.DecoderConfig.from_hf_dict(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.05 if "norm" in name else std))
    return model


def batch(
    vocab: int, rows: int, seq: int, trained: list[int], *, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [rows, seq]`` and shifted ``labels`` with ``trained[i]`` trained positions at row i's end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq + 1), generator=g)
    labels = ids[:, 1:].clone()
    for i, n in enumerate(trained):
        labels[i, : seq - n] = -100
    return ids[:, :-1], labels
