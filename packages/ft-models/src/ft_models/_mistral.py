"""Mistral builder (Jiang et al. 2023, "Mistral 7B", arXiv:2310.06825).

Mistral is the Llama architecture with sliding-window attention: every layer attends to the last
``sliding_window`` tokens (a key is visible when ``query_slot - key_slot < sliding_window``, the same
rule as transformers, off-by-one included). The window is a mask concern, so it holds during cached
decoding too: the cache keeps every key and the mask hides those outside the window. Mistral 7B v0.1
uses a 4096-token window; v0.2 / v0.3 set ``sliding_window: null`` (full attention). An absent key
means 4096, as in transformers. No projection has a bias.
"""

from __future__ import annotations

from typing import Any

from ._config import DecoderConfig, RopeConfig
from ._family import Family
from ._llama import build_llama
from ._presets import preset_lookup

__all__ = ["MISTRAL", "MISTRAL_PRESETS", "mistral_config"]


def _read(data: dict[str, Any], source: str) -> dict[str, Any]:
    window = data.get("sliding_window", 4096)
    return {
        "attention_bias": False,
        "mlp_bias": False,
        "sliding_window": int(window) if window is not None else None,
    }


def _write(config: DecoderConfig) -> dict[str, Any]:
    return {"sliding_window": config.sliding_window}


def _preset(**kw: Any) -> DecoderConfig:
    base: dict[str, Any] = {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32768,
    }  # fmt: skip
    return DecoderConfig(**{**base, **kw})


MISTRAL_PRESETS: dict[str, DecoderConfig] = {
    "mistral-7b-v0.1": _preset(vocab_size=32000, sliding_window=4096, rope=RopeConfig(theta=10000.0)),
    "mistral-7b-v0.3": _preset(vocab_size=32768, rope=RopeConfig(theta=1e6)),
}


def mistral_config(name: str, **overrides: object) -> DecoderConfig:
    """A Mistral preset's :class:`DecoderConfig`, optionally with fields replaced.

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(MISTRAL_PRESETS, "Mistral", name, overrides)


MISTRAL = Family(
    model_type="mistral",
    architecture="MistralForCausalLM",
    build=build_llama,
    read=_read,
    write=_write,
    drop_keys=("attention_bias", "mlp_bias"),
    presets=MISTRAL_PRESETS,
)
