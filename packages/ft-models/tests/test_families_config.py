"""Family config keys read as transformers reads them, where a key is absent, off or family-specific.

Qwen2's window keys in a hand-written Hub-style config.json (``sliding_window`` counts only when
``use_sliding_window`` is true; lower layers attend fully); Qwen3's ``head_dim`` default of 128 rather
than ``hidden / heads``; Mistral's absent ``sliding_window`` meaning 4096 and ``null`` meaning none. The
shared parity checks of every family are in ``test_families_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from family_support import check_logits, make_reference, reference_from_handwritten, variant
from family_table import MISTRAL, QWEN3

import ft_models
from ft_models import CheckpointError

HANDWRITTEN: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 131,
    "hidden_size": 56,
    "intermediate_size": 80,
    "num_hidden_layers": 3,
    "num_attention_heads": 7,
    "num_key_value_heads": 1,
    "hidden_act": "silu",
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": True,
    "sliding_window": 5,
    "max_window_layers": 1,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "use_cache": True,
    "attention_dropout": 0.0,
}


@torch.no_grad()
def test_qwen2_handwritten_hub_config_with_window_keys(tmp_path: Path) -> None:
    hf = reference_from_handwritten(HANDWRITTEN, tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    assert model.config.window(0) is None
    assert model.config.window(1) == model.config.window(2) == 5
    assert model.config.rope.theta == 1e6
    ignored = variant(model, sliding_window=None)  # wrong: the window keys not read
    check_logits(hf, model, {"window-keys-ignored": ignored, "window+1": variant(model, sliding_window=6)})
    # Released configs: sliding_window present but switched off reads as no window at all.
    off = ft_models.DecoderConfig.from_hf_dict({**HANDWRITTEN, "use_sliding_window": False})
    assert [off.window(i) for i in range(3)] == [None] * 3
    default = ft_models.DecoderConfig.from_hf_dict(
        {**HANDWRITTEN, "sliding_window": None} | {"use_sliding_window": True}
    )
    assert default.sliding_window is None
    assert json.loads((tmp_path / "config.json").read_text())["max_window_layers"] == 1


def test_qwen3_head_dim_defaults_to_128_like_transformers(tmp_path: Path) -> None:
    """Without a head_dim key Qwen3 uses 128, not hidden / heads: a checkpoint of the other shape fails."""
    config = {**QWEN3.cases["gqa4-untied"]}
    del config["head_dim"]
    hf = make_reference(config, seed=1)
    assert hf.config.head_dim == 128
    hf.save_pretrained(tmp_path)
    assert ft_models.from_pretrained(tmp_path).config.head_dim == 128
    parsed = ft_models.DecoderConfig.from_hf_dict(config)
    assert parsed.head_dim == 128
    # Wrong variant: head_dim = hidden / heads (8), the shared default, does not fit the tensors.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(
        (tmp_path / "config.json").read_text().replace('"head_dim": 128', '"head_dim": 8')
    )
    (bad / "model.safetensors").symlink_to(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has shape \(128,\), the model expects \(8,\)"):
        ft_models.from_pretrained(bad)


def test_mistral_absent_window_key_means_4096_like_transformers() -> None:
    config = {**MISTRAL.cases["gqa4-window-untied"]}
    del config["sliding_window"]
    assert (
        ft_models.DecoderConfig.from_hf_dict(config).sliding_window
        == make_reference(config).config.sliding_window
    )
    assert ft_models.DecoderConfig.from_hf_dict({**config, "sliding_window": None}).sliding_window is None
