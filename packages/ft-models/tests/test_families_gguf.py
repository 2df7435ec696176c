"""Qwen2 and Qwen3 GGUF files (llama.cpp's layout: its names, q/k rows left in rotate-half order, Qwen3's
``attn_q_norm``/``attn_k_norm``) read by ft against the transformers model they were written from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from family_support import check_logits, make_reference, shape
from gguf_support import write_llama_gguf

import ft_models
from ft_models import _gguf

CASES: dict[str, dict[str, Any]] = {
    "qwen2-gqa7-tied": {
        **shape("gqa7"),
        "model_type": "qwen2",
        "tie_word_embeddings": True,
        "rope_theta": 1e6,
    },
    "qwen3-gqa4-untied-bias": {
        **shape("gqa4"),
        "model_type": "qwen3",
        "tie_word_embeddings": False,
        "attention_bias": True,
    },
}


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_gguf_matches_the_original_model(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CASES[name]
    hf = make_reference(config, seed=len(name))
    sd = dict(hf.state_dict())
    if hf.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    values = {**config, "rope_theta": config.get("rope_theta", 10000.0)}
    path = write_llama_gguf(
        tmp_path / f"{name}.gguf", sd, values, architecture=config["model_type"], permute_rotary=False
    )
    model = ft_models.from_pretrained(path)
    c = model.config
    assert c.model_type == config["model_type"]
    assert c.head_dim == config["head_dim"]
    assert c.tie_word_embeddings == config["tie_word_embeddings"]
    assert c.rope.theta == values["rope_theta"]
    if c.model_type == "qwen3":
        assert c.attention_bias
    # Wrong variant: reading the file with Llama's q/k row un-permutation.
    arch = _gguf._ARCHITECTURES[config["model_type"]]
    monkeypatch.setitem(
        _gguf._ARCHITECTURES,
        config["model_type"],
        _gguf.dataclasses.replace(arch, rotary_rows=_gguf._LLAMA.rotary_rows),
    )
    permuted = ft_models.from_pretrained(path)
    check_logits(hf, model, {"llama-permutation": permuted})
