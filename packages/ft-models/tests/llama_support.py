"""Tiny transformers reference models with awkward shapes, shared by the ft-models Llama tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

# GQA 4:1 with head_dim 24 != 64 / 8, and GQA 7:1 with head_dim 12 != 56 / 7; odd vocabularies.
SHAPES: dict[str, dict[str, Any]] = {
    "gqa4": {
        "vocab_size": 97,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 24,
    },
    "gqa7": {
        "vocab_size": 131,
        "hidden_size": 56,
        "intermediate_size": 80,
        "num_hidden_layers": 3,
        "num_attention_heads": 7,
        "num_key_value_heads": 1,
        "head_dim": 12,
    },
}
# Llama-3 scaling with a 16-token original context, so test sequences are longer than it.
LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
LINEAR_ROPE: dict[str, Any] = {"rope_type": "linear", "factor": 3.0}


def hf_config(
    shape: str, *, tie: bool, rope_scaling: dict[str, Any] | None = None, theta: float = 10000.0
) -> LlamaConfig:
    """A transformers LlamaConfig for one of :data:`SHAPES` (eager attention, the reference)."""
    cfg = LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=theta,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"
    return cfg


@torch.no_grad()
def randomize(model: torch.nn.Module, *, std: float, seed: int, norms: bool = True) -> None:
    """Re-initialise weights with ``N(0, std)``; norm weights get ``1 + N(0, 0.1)`` (or stay ones).

    Default-initialised tiny models have near-uniform attention, where positional bugs hide and
    greedy decoding repeats one token.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            if norms:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(std * torch.randn(p.shape, generator=g))


def make_hf(
    shape: str,
    *,
    tie: bool,
    rope_scaling: dict[str, Any] | None = None,
    theta: float = 10000.0,
    std: float = 0.1,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A random fp32 transformers Llama in eval mode."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config(shape, tie=tie, rope_scaling=rope_scaling, theta=theta)).eval()
    randomize(model, std=std, seed=seed)
    return model


def save_weights_only(model: LlamaForCausalLM, directory: Path) -> None:
    """Write ``model.safetensors`` the way HF checkpoints store it (tied head omitted)."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})


def hf_from_handwritten(config: dict[str, Any], directory: Path, *, seed: int = 0) -> LlamaForCausalLM:
    """Write ``config.json`` by hand, build the reference from it with transformers, save its weights."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(directory)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    randomize(model, std=0.1, seed=seed)
    save_weights_only(model, directory)
    return model


def padded_batch(lengths: list[int], vocab: int, *, left: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random rows padded to a common length.

    Returns:
        ``input_ids``, ``attention_mask`` (1 real), ``document_ids`` (0 real, -1 pad) and
        ``position_ids`` counting real tokens from 0, each ``[b, s]``.
    """
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    ids = torch.zeros(len(lengths), s, dtype=torch.long)
    mask = torch.zeros(len(lengths), s, dtype=torch.long)
    for i, n in enumerate(lengths):
        sl = slice(s - n, s) if left else slice(0, n)
        ids[i, sl] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, sl] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, torch.where(mask.bool(), 0, -1), positions
