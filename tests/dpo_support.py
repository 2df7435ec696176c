"""A tiny HF Llama with SmolLM2's real tokenizer and preference pairs, shared by the DPO tests.

The model has awkward shapes (3 heads of 24 over a width of 60, one KV head, tied embeddings) and weights
small enough (std 0.05) that per-token log-probs stay near the uniform -ln(v): summed log-probs of a
few hundred, the scale real DPO runs see.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ft_data
import ft_models

PAIRS = [
    ("What color is the sky on a clear day?", "Blue, mostly.", "Green with purple dots, I believe."),
    ("Name a prime number larger than ten.", "Thirteen is prime.", "Nine."),
    ("Translate 'chat' from French, please, in one word.", "Cat.", "A long talk between two friends."),
    ("Is water wet?", "Water makes things wet; whether it is wet itself is a matter of definition.", "No."),
    ("Spell the word 'apple' backwards.", "elppa", "Apple spelled backwards is apple."),
    ("How many legs does a spider have?", "Eight.", "Six, like every insect."),
]


def make_tiny_dpo(root: Path, *, std: float = 0.05, seed: int = 0) -> tuple[Path, Path]:
    """An HF Llama directory (with tokenizer files) and a JSONL of prompt/chosen/rejected string pairs."""
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
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else std * torch.randn_like(p))
    hf.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rows = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", root / "pairs.jsonl"


def trained_only(example: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """A pair cut after its last trained token (what the template writes after the end-of-turn marker is
    not trained), as ft's example and as TRL's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``.

    TRL's completion is everything after the prompt; ft trains the answer through its end-of-turn marker.
    Cutting the untrained tail makes the two the same tokens, so both trainers see the same batch.
    """
    out, trl = {}, {}
    for side in ("chosen", "rejected"):
        ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
        trained = [t + 1 for t, x in enumerate(labels) if x != -100]
        end = trained[-1] + 1
        out[f"{side}_input_ids"], out[f"{side}_labels"] = ids[:end], labels[:end]
        prompt = trained[0]
        assert trained == list(range(prompt, end)), "one contiguous answer"
        trl["prompt_ids"] = ids[:prompt]
        trl[f"{side}_ids"] = ids[prompt:end]
    return out, trl
