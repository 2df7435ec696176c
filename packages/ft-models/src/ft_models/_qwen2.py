"""Qwen2 / Qwen2.5 builder (Yang et al. 2024, arXiv:2407.10671; Qwen2.5 report, arXiv:2412.15115).

Qwen2 is the Llama architecture with a bias on the q/k/v projections (none on ``o_proj`` or the MLP)
and an optional sliding window. The window keys are read exactly as transformers reads them:
``sliding_window`` counts only when ``use_sliding_window`` is true; then, unless ``layer_types`` is
given, layers ``i >= max_window_layers`` slide and the lower ones attend to everything. Every released
Qwen2 / Qwen2.5 config has ``use_sliding_window: false`` (the ``sliding_window`` value it carries is
unused). Small sizes tie the embeddings.
"""

from __future__ import annotations

from typing import Any

from ._attention import AttentionKernel
from ._builder import attention, causal_lm
from ._config import FULL, SLIDING, DecoderConfig, RopeConfig
from ._decoder import CausalLM, DecoderLayer
from ._family import Family
from ._mlp import ACTIVATIONS, GatedMLP
from ._norm import RMSNorm
from ._presets import preset_lookup

__all__ = ["QWEN2", "QWEN2_PRESETS", "build_qwen2", "qwen2_config", "read_window_keys", "write_window_keys"]


def build_qwen2(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build a Qwen2 / Qwen2.5 model (parameters uninitialised, meta-device safe).

    Args:
        config: Shapes; ``config.window(i)`` gives each layer's sliding window.
        kernel: Attention kernel shared by all layers (SDPA by default).
    """
    c = config
    layers = [
        DecoderLayer(
            self_attn=attention(c, i, kernel=kernel, bias=True, o_bias=False),
            mlp=GatedMLP(c.hidden_size, c.intermediate_size, activation=ACTIVATIONS[c.hidden_act]),
            input_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
        )
        for i in range(c.num_hidden_layers)
    ]
    return causal_lm(c, layers, RMSNorm(c.hidden_size, c.rms_norm_eps))


def read_window_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``use_sliding_window`` / ``sliding_window`` / ``max_window_layers`` / ``layer_types`` (Qwen2, Qwen3).

    Defaults are transformers': window 4096 when the key is absent, ``max_window_layers`` 28, windows off.
    """
    window = data.get("sliding_window", 4096) if data.get("use_sliding_window", False) else None
    layers = int(data["num_hidden_layers"])
    types = data.get("layer_types")
    if types is None:
        first = int(data.get("max_window_layers", 28))
        types = [SLIDING if window is not None and i >= first else FULL for i in range(layers)]
    return {
        "sliding_window": int(window) if window is not None else None,
        "layer_types": tuple(types),
    }


def write_window_keys(config: DecoderConfig) -> dict[str, Any]:
    """The Hub keys for :func:`read_window_keys`, with ``layer_types`` explicit (transformers 5 reads it)."""
    types = config.layer_types or (SLIDING,) * config.num_hidden_layers
    sliding = [i for i, t in enumerate(types) if t == SLIDING]
    return {
        "use_sliding_window": config.sliding_window is not None,
        "sliding_window": config.sliding_window,
        "max_window_layers": sliding[0] if sliding else config.num_hidden_layers,
        "layer_types": list(types),
    }


def _read(data: dict[str, Any], source: str) -> dict[str, Any]:
    return {"attention_bias": False, "mlp_bias": False, **read_window_keys(data, source)}


def _preset(**kw: Any) -> DecoderConfig:
    base: dict[str, Any] = {
        "model_type": "qwen2", "head_dim": 128, "rms_norm_eps": 1e-6, "rope": RopeConfig(theta=1e6),
        "max_position_embeddings": 32768, "layer_types": (FULL,) * kw["num_hidden_layers"],
    }  # fmt: skip
    return DecoderConfig(**{**base, **kw})


QWEN2_PRESETS: dict[str, DecoderConfig] = {
    "qwen2.5-0.5b": _preset(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": _preset(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "qwen2.5-3b": _preset(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "qwen2.5-7b": _preset(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
    ),
    "qwen2.5-14b": _preset(
        vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
    ),
    "qwen2.5-32b": _preset(
        vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
    ),
    "qwen2.5-72b": _preset(
        vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
    ),
}  # fmt: skip


def qwen2_config(name: str, **overrides: object) -> DecoderConfig:
    """A Qwen2.5 preset's :class:`DecoderConfig`, optionally with fields replaced.

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(QWEN2_PRESETS, "Qwen2", name, overrides)


QWEN2 = Family(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    build=build_qwen2,
    read=_read,
    write=write_window_keys,
    drop_keys=("attention_bias", "mlp_bias"),
    presets=QWEN2_PRESETS,
)
