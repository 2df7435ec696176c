"""Shared builders for ft-peft's tests: tiny models with awkward shapes, adapter randomisation."""

from __future__ import annotations

import torch
from torch import nn


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A 2-layer LlamaForCausalLM with odd vocab, head_dim != hidden / heads and a 3:1 GQA ratio."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=131,
        hidden_size=48,
        intermediate_size=70,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # weights with spread, so adapters and quantisation errors show in logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


class Block(nn.Module):
    """A user's own module: two linears with odd shapes, one without bias."""

    def __init__(self, d_in: int = 37, d_hidden: int = 23, d_out: int = 19) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_hidden)
        self.out = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(x)))


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter tensor (B included) non-zero values so adapters change outputs."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "magnitude" in name else 0.0))
