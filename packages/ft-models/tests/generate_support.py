"""Tiny transformers references for the generation tests (std 0.3 weights, so greedy wanders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from llama_support import SHAPES
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import ft_models
from ft_models import CausalLM

# Family-specific keys: short sliding windows, so windowed masks are exercised in the decode step.
FAMILY_KEYS: dict[str, dict[str, Any]] = {
    "mistral": {"sliding_window": 6},
    "gemma2": {"sliding_window": 6, "query_pre_attn_scalar": 12, "final_logit_softcapping": 5.0},
}


def transformers_has(model_type: str) -> bool:
    try:
        AutoConfig.for_model(model_type)
    except (KeyError, ValueError):
        return False
    return True


def make_pair(model_type: str, directory: Path, *, seed: int = 11) -> tuple[PreTrainedModel, CausalLM]:
    """A random fp32 transformers model (eager attention, std 0.3, norms untouched) and ft's copy."""
    data = {**SHAPES["gqa7"], "max_position_embeddings": 256, "tie_word_embeddings": False}
    data.update(FAMILY_KEYS.get(model_type, {}))
    data.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = AutoConfig.for_model(model_type, **data)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" not in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(directory)
    hf.generation_config.eos_token_id = None  # stop only where a test says so
    return hf, ft_models.from_pretrained(directory)


def ragged_prompts(vocab: int, lengths: tuple[int, ...] = (3, 11, 7), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g) for n in lengths]


def assert_diverse(rows: torch.Tensor | list[list[int]], at_least: int = 8) -> None:
    """Greedy output of a degenerate model repeats one token and proves nothing."""
    for row in rows:
        values = row.tolist() if isinstance(row, torch.Tensor) else row
        assert len(set(values)) >= at_least, values


def hf_new_tokens(hf: PreTrainedModel, rows: list[torch.Tensor], n: int, **kwargs: Any) -> list[list[int]]:
    """transformers' ``generate`` on the left-padded batch; each row's new tokens, cut at its length.

    A row's length is where it emitted an EOS id (included) or ``n``.
    """
    ids, docs = ft_models.left_pad(rows)
    out = hf.generate(
        input_ids=ids, attention_mask=(docs >= 0).long(), max_new_tokens=n, pad_token_id=0, **kwargs
    )[:, ids.shape[1] :]
    eos = kwargs.get("eos_token_id")
    eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    result = []
    for row in out.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        result.append(row[:cut])
    return result


def ft_rows(new: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each row's new tokens, cut at its returned length."""
    return [new[i, : int(n)].tolist() for i, n in enumerate(lengths)]
