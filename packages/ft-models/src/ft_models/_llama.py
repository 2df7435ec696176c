"""Llama-family builder (Llama 3 / 3.1 / 3.2, SmolLM2; Touvron et al. 2023, arXiv:2302.13971).

Llama is a pre-norm decoder with RMSNorm, RoPE, grouped-query attention and a SwiGLU MLP. The builder
wires the shared blocks together; size presets carry the published architecture shapes (token ids and
dtypes belong to a checkpoint, not to a shape, and are left unset).
"""

from __future__ import annotations

from ._attention import AttentionKernel
from ._builder import attention, causal_lm
from ._config import DecoderConfig, RopeConfig
from ._decoder import CausalLM, DecoderLayer
from ._family import Family
from ._mlp import ACTIVATIONS, GatedMLP
from ._norm import RMSNorm
from ._presets import preset_lookup

__all__ = ["LLAMA", "LLAMA_PRESETS", "build_llama", "llama_config"]


def build_llama(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build a Llama-architecture model (parameters uninitialised, meta-device safe).

    Build under ``torch.device("meta")`` to allocate nothing, then load weights, or materialise with
    ``to_empty`` and call ``reset_parameters``. A ``sliding_window`` in the config (Mistral) is honoured
    per layer.

    Args:
        config: Shapes and numerics.
        kernel: Attention kernel shared by all layers (SDPA by default).
    """
    c = config
    layers = [
        DecoderLayer(
            self_attn=attention(c, i, kernel=kernel, bias=c.attention_bias, o_bias=c.attention_bias),
            mlp=GatedMLP(
                c.hidden_size, c.intermediate_size, bias=c.mlp_bias, activation=ACTIVATIONS[c.hidden_act]
            ),
            input_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
            post_attention_layernorm=RMSNorm(c.hidden_size, c.rms_norm_eps),
        )
        for i in range(c.num_hidden_layers)
    ]
    return causal_lm(c, layers, RMSNorm(c.hidden_size, c.rms_norm_eps))


def _llama3_rope(theta: float, factor: float) -> RopeConfig:
    return RopeConfig("llama3", theta, factor, 1.0, 4.0, 8192)


def _preset(**kw: object) -> DecoderConfig:
    return DecoderConfig(**kw)  # type: ignore[arg-type]


LLAMA_PRESETS: dict[str, DecoderConfig] = {
    "smollm2-135m": _preset(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope=RopeConfig(theta=100000.0), tie_word_embeddings=True,
    ),
    "smollm2-360m": _preset(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope=RopeConfig(theta=100000.0), tie_word_embeddings=True,
    ),
    "smollm2-1.7b": _preset(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope=RopeConfig(theta=130000.0), tie_word_embeddings=True,
    ),
    "llama3.2-1b": _preset(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope=_llama3_rope(500000.0, 32.0), tie_word_embeddings=True,
    ),
    "llama3.2-3b": _preset(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope=_llama3_rope(500000.0, 32.0), tie_word_embeddings=True,
    ),
    "llama3.1-8b": _preset(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope=_llama3_rope(500000.0, 8.0), tie_word_embeddings=False,
    ),
    "llama3-8b": _preset(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope=RopeConfig(theta=500000.0), tie_word_embeddings=False,
    ),
}  # fmt: skip


def llama_config(name: str, **overrides: object) -> DecoderConfig:
    """A Llama preset's :class:`DecoderConfig`, optionally with fields replaced (``dtype="bfloat16"``).

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(LLAMA_PRESETS, "Llama", name, overrides)


LLAMA = Family(model_type="llama", architecture="LlamaForCausalLM", build=build_llama, presets=LLAMA_PRESETS)
