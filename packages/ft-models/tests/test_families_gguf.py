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


def test_load_pretrained_returns_the_format_and_metadata_beside_the_model(tmp_path: Path) -> None:
    """The loader says what a path holds (``checkpoint_format``, without reading weights) and returns a
    GGUF file's metadata next to the model; an HF directory gives ``"hf"`` and no metadata."""
    config = CASES["qwen2-gqa7-tied"]
    hf = make_reference(config, seed=3)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    gguf_file = write_llama_gguf(
        tmp_path / "m.gguf", sd, {**config}, architecture="qwen2", permute_rotary=False,
        metadata={"general.name": "tiny test model"},
    )  # fmt: skip
    hf.save_pretrained(tmp_path / "hf")
    assert ft_models.checkpoint_format(gguf_file) == "gguf"
    assert ft_models.checkpoint_format(tmp_path / "hf") == "hf"

    loaded = ft_models.load_pretrained(gguf_file)
    assert loaded.format == "gguf"
    assert loaded.gguf_metadata is not None
    assert loaded.gguf_metadata["general.name"] == "tiny test model"
    assert loaded.gguf_metadata == _gguf.read_gguf(gguf_file, load_tensors=False).metadata
    assert not hasattr(loaded.model, "gguf_metadata")
    from_hf = ft_models.load_pretrained(tmp_path / "hf")
    assert (from_hf.format, from_hf.gguf_metadata) == ("hf", None)
    with torch.no_grad():  # the same model either way (from_pretrained is the loader's model)
        ids = torch.randint(0, config["vocab_size"], (1, 12))
        torch.testing.assert_close(loaded.model(ids), from_hf.model(ids), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            ft_models.from_pretrained(gguf_file)(ids), loaded.model(ids), rtol=0, atol=0
        )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "no such file or directory"),
        (
            lambda d: (d / "weights.bin").write_bytes(b"x") and d / "weights.bin",
            "expected a model directory or a .gguf",
        ),
        (lambda d: d, "config.json: file not found"),
    ],
    ids=["missing", "not-gguf", "no-config"],
)
def test_checkpoint_format_refuses_what_is_no_checkpoint(make: Any, message: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(ft_models.CheckpointError, match=message):
        ft_models.checkpoint_format(path)
    with pytest.raises(ft_models.CheckpointError, match=message):
        ft_models.load_pretrained(path)
