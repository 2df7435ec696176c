"""Qwen3 dense builder (Qwen3 technical report, Yang et al. 2025, arXiv:2505.09388).

Qwen3 drops Qwen2's q/k/v bias and instead normalises each query and key head with an RMSNorm over
``head_dim`` before RoPE (``self_attn.q_norm`` / ``self_attn.k_norm``, one ``[h_d]`` gain shared by the
heads). ``head_dim`` is set independently of ``hidden_size / num_attention_heads`` (128 in every
released size, and transformers' default when the key is absent). The sliding-window keys are Qwen2's.
"""

from __future__ import annotations

from typing import Any

from ._attention import AttentionKernel
from ._builder import attention, causal_lm
from ._config import FULL, DecoderConfig, RopeConfig
from ._decoder import CausalLM, DecoderLayer
from ._family import Family
from ._mlp import ACTIVATIONS, GatedMLP
from ._norm import RMSNorm
from ._presets import preset_lookup
from ._qwen2 import read_window_keys, write_window_keys

__all__ = ["QWEN3", "QWEN3_PRESETS", "build_qwen3", "qwen3_config"]


def build_qwen3(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build a Qwen3 dense model (parameters uninitialised, meta-device safe).

    Args:
        config: Shapes; ``attention_bias`` puts a bias on all four attention projections.
        kernel: Attention kernel shared by all layers (SDPA by default).
    """
    c = config
    layers = [
        DecoderLayer(
            self_attn=attention(
                c,
                i,
                kernel=kernel,
                bias=c.attention_bias,
                o_bias=c.attention_bias,
                q_norm=RMSNorm(c.head_dim, c.rms_norm_eps),
                k_norm=RMSNorm(c.head_dim, c.rms_norm_eps),
            ),
            mlp=GatedMLP(c.hidden_size, c.intermediate_size, activation=ACTIVATIONS[c.hidden_act]),
            input_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
        )
        for i in range(c.num_hidden_layers)
    ]
    return causal_lm(c, layers, RMSNorm(c.hidden_size, c.rms_norm_eps))


def _read(data: dict[str, Any], source: str) -> dict[str, Any]:
    return {"head_dim": int(data.get("head_dim") or 128), "mlp_bias": False, **read_window_keys(data, source)}


def _preset(**kw: Any) -> DecoderConfig:
    base: dict[str, Any] = {
        "model_type": "qwen3", "head_dim": 128, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
        "rope": RopeConfig(theta=1e6), "max_position_embeddings": 40960,
        "layer_types": (FULL,) * kw["num_hidden_layers"], "vocab_size": 151936,
    }  # fmt: skip
    return DecoderConfig(**{**base, **kw})


QWEN3_PRESETS: dict[str, DecoderConfig] = {
    "qwen3-0.6b": _preset(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": _preset(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": _preset(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": _preset(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
    ),
    "qwen3-14b": _preset(
        hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
    ),
    "qwen3-32b": _preset(
        hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
    ),
}  # fmt: skip


def qwen3_config(name: str, **overrides: object) -> DecoderConfig:
    """A Qwen3 preset's :class:`DecoderConfig`, optionally with fields replaced.

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(QWEN3_PRESETS, "Qwen3", name, overrides)


QWEN3 = Family(
    model_type="qwen3",
    architecture="Qwen3ForCausalLM",
    build=build_qwen3,
    read=_read,
    write=write_window_keys,
    drop_keys=("mlp_bias",),
    presets=QWEN3_PRESETS,
)
