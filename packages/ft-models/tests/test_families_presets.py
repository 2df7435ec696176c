"""Size presets of Qwen2.5, Qwen3, Mistral and Gemma 2 against published parameter counts.

Published figures are those of the model cards / release notes (total and, where given, non-embedding
parameters), rounded as published: the tolerance is half a unit of the last published digit, and at
least 1% because some cards round loosely (Qwen2.5-32B's card says 32.5B, its weights hold 32.76B).
"""

from __future__ import annotations

import pytest
import torch

import ft_models

# name -> (total, non-embedding or None), as published.
PUBLISHED: dict[str, tuple[str, str | None]] = {
    "qwen2.5-0.5b": ("0.49", "0.36"),
    "qwen2.5-1.5b": ("1.54", "1.31"),
    "qwen2.5-3b": ("3.09", "2.77"),
    "qwen2.5-7b": ("7.61", "6.53"),
    "qwen2.5-14b": ("14.7", "13.1"),
    "qwen2.5-32b": ("32.5", "31.0"),
    "qwen2.5-72b": ("72.7", "70.0"),
    "qwen3-0.6b": ("0.6", "0.44"),
    "qwen3-1.7b": ("1.7", "1.4"),
    "qwen3-4b": ("4.0", "3.6"),
    "qwen3-8b": ("8.2", "6.95"),
    "qwen3-14b": ("14.8", "13.2"),
    "qwen3-32b": ("32.8", "31.2"),
    "mistral-7b-v0.1": ("7.24", None),
    "mistral-7b-v0.3": ("7.25", None),
    "gemma2-2b": ("2.61", None),
    "gemma2-9b": ("9.24", None),
    "gemma2-27b": ("27.2", None),
}


def close_to(count: int, published: str) -> bool:
    value = float(published) * 1e9
    decimals = len(published.partition(".")[2])
    return abs(count - value) <= max(0.5 * 10**-decimals * 1e9, 0.01 * value)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_preset_parameter_counts(name: str) -> None:
    config = ft_models.preset_config(name)
    with torch.device("meta"):
        model = ft_models.build_model(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    embeddings = model.model.embed_tokens.weight.numel() * (1 if config.tie_word_embeddings else 2)
    published_total, published_body = PUBLISHED[name]
    assert close_to(total, published_total), total
    if published_body is not None:
        assert close_to(total - embeddings, published_body), total - embeddings
    # Wrong variant: the same shape with the embedding tie flipped misses the published total.
    n_embed = model.model.embed_tokens.weight.numel()
    flipped = total + (n_embed if config.tie_word_embeddings else -n_embed)
    assert not close_to(flipped, published_total), flipped


def test_presets_are_ready_for_their_builders() -> None:
    assert set(ft_models.QWEN2_PRESETS) | set(ft_models.QWEN3_PRESETS) | set(ft_models.MISTRAL_PRESETS) | set(
        ft_models.GEMMA2_PRESETS
    ) == set(PUBLISHED)
    gemma = ft_models.gemma2_config("gemma2-27b")
    assert gemma.query_pre_attn_scalar == gemma.hidden_size / gemma.num_attention_heads == 144
    assert [gemma.window(i) for i in range(4)] == [4096, None, 4096, None]
    assert ft_models.mistral_config("mistral-7b-v0.1").sliding_window == 4096
    assert ft_models.mistral_config("mistral-7b-v0.3").sliding_window is None
    assert ft_models.qwen2_config("qwen2.5-0.5b").tie_word_embeddings
    assert not ft_models.qwen2_config("qwen2.5-7b").tie_word_embeddings
    assert ft_models.qwen3_config("qwen3-8b").head_dim == 128
