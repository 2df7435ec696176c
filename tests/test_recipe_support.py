"""A tiny HF Llama directory with SmolLM2's real tokenizer and a chat JSONL, shared by the recipe tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ft_data
import ft_models


def make_tiny(root: Path) -> tuple[Path, Path]:
    """An HF Llama directory (with tokenizer) and a chat JSONL with examples of very different lengths."""
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=60,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=24,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    hf.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = []
    for i in range(8):
        answer = " ".join(["the answer is", str(i)] + ["and more words"] * (1 + 3 * (i % 4)))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"question {i}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", root / "train.jsonl"
