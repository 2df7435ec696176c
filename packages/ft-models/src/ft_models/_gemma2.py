"""Gemma 2 builder (Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size",
arXiv:2408.00118).

Differences from Llama, each an injected module or value rather than a flag in shared code:

* norms are :class:`UnitOffsetRMSNorm` (gain ``1 + weight``, product in fp32);
* token embeddings are multiplied by ``sqrt(hidden_size)`` (``TransformerDecoder.embed_scale``);
* the MLP is GeGLU (:class:`GatedMLP` with GELU-tanh);
* each layer has norms before *and* after attention and MLP (:class:`SandwichDecoderLayer`, four norms
  with transformers' names);
* layers alternate sliding-window (even indices) and global attention (``layer_types``);
* attention scores are scaled by ``query_pre_attn_scalar ** -0.5`` and soft-capped,
  ``cap * tanh(s / cap)``; SDPA cannot modify scores, so with a cap the builder picks the eager kernel
  with a :func:`soft_cap` score modifier;
* final logits are soft-capped inside :meth:`CausalLM.output_projection`, so a chunked loss that calls
  it applies the cap too.

Absent keys take transformers' defaults (``head_dim`` 256, ``query_pre_attn_scalar`` 256, window 4096,
caps 50 / 30, tied embeddings); an explicit ``null`` cap turns capping off.
"""

from __future__ import annotations

from typing import Any

from ._attention import AttentionKernel, EagerKernel, soft_cap
from ._builder import attention, causal_lm
from ._config import FULL, SLIDING, DecoderConfig, RopeConfig
from ._decoder import CausalLM, SandwichDecoderLayer
from ._family import Family
from ._mlp import ACTIVATIONS, GatedMLP
from ._norm import UnitOffsetRMSNorm
from ._presets import preset_lookup
from .errors import ConfigError

__all__ = ["GEMMA2", "GEMMA2_PRESETS", "build_gemma2", "gemma2_config"]


def build_gemma2(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build a Gemma 2 model (parameters uninitialised, meta-device safe).

    Args:
        config: Shapes, windows, soft-caps.
        kernel: Attention kernel. ``None`` picks ``EagerKernel(score_mod=soft_cap(cap))`` when the config
            caps attention logits, SDPA otherwise. A given kernel must apply the cap itself: an
            :class:`EagerKernel` with a score modifier is accepted, anything else is refused.

    Raises:
        ConfigError: A kernel without a score modifier for a config that caps attention logits.
    """
    c = config
    cap = c.attn_logit_softcapping
    if cap is not None:
        if kernel is None:
            kernel = EagerKernel(score_mod=soft_cap(cap))
        elif not (isinstance(kernel, EagerKernel) and kernel.score_mod is not None):
            raise ConfigError(
                f"attn_logit_softcapping={cap} needs a kernel that modifies scores, got {kernel!r} "
                f"(use EagerKernel(score_mod=soft_cap({cap})) or kernel=None)"
            )

    def norm() -> UnitOffsetRMSNorm:
        return UnitOffsetRMSNorm(c.hidden_size, c.rms_norm_eps)

    layers = [
        SandwichDecoderLayer(
            self_attn=attention(c, i, kernel=kernel, bias=c.attention_bias, o_bias=c.attention_bias),
            mlp=GatedMLP(c.hidden_size, c.intermediate_size, activation=ACTIVATIONS[c.hidden_act]),
            input_layernorm=norm(),
            post_attention_layernorm=norm(),
            pre_feedforward_layernorm=norm(),
            post_feedforward_layernorm=norm(),
        )
        for i in range(c.num_hidden_layers)
    ]
    final = c.final_logit_softcapping
    return causal_lm(
        c,
        layers,
        norm(),
        embed_scale=c.hidden_size**0.5,
        logit_transform=soft_cap(final) if final is not None else None,
    )


def _cap(data: dict[str, Any], key: str, default: float) -> float | None:
    value = data.get(key, default)
    return float(value) if value is not None else None


def _read(data: dict[str, Any], source: str) -> dict[str, Any]:
    if data.get("use_bidirectional_attention"):
        raise ConfigError(
            f"{source}: key 'use_bidirectional_attention' = true is not supported (decoder only)"
        )
    layers = int(data["num_hidden_layers"])
    window = data.get("sliding_window", 4096)
    types = data.get("layer_types") or [SLIDING if i % 2 == 0 else FULL for i in range(layers)]
    return {
        "head_dim": int(data.get("head_dim") or 256),
        "hidden_act": data.get("hidden_activation", "gelu_pytorch_tanh"),
        "tie_word_embeddings": bool(data.get("tie_word_embeddings", True)),
        "mlp_bias": False,
        "query_pre_attn_scalar": float(data.get("query_pre_attn_scalar", 256)),
        "attn_logit_softcapping": _cap(data, "attn_logit_softcapping", 50.0),
        "final_logit_softcapping": _cap(data, "final_logit_softcapping", 30.0),
        "sliding_window": int(window) if window is not None else None,
        "layer_types": tuple(types),
    }


def _write(config: DecoderConfig) -> dict[str, Any]:
    scalar = config.query_pre_attn_scalar
    if scalar is not None and float(scalar).is_integer():
        scalar = int(scalar)  # transformers' Gemma2Config declares an int
    return {
        "hidden_activation": config.hidden_act,  # the key transformers' Gemma 2 reads
        "query_pre_attn_scalar": scalar,
        "attn_logit_softcapping": config.attn_logit_softcapping,
        "final_logit_softcapping": config.final_logit_softcapping,
        "sliding_window": config.sliding_window,
        "layer_types": list(config.layer_types) if config.layer_types is not None else None,
    }


def _preset(**kw: Any) -> DecoderConfig:
    layers = kw["num_hidden_layers"]
    base: dict[str, Any] = {
        "model_type": "gemma2", "vocab_size": 256000, "head_dim": 256, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 8192, "rope": RopeConfig(theta=10000.0), "tie_word_embeddings": True,
        "hidden_act": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256.0, "sliding_window": 4096,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "layer_types": tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)),
    }  # fmt: skip
    return DecoderConfig(**{**base, **kw})


GEMMA2_PRESETS: dict[str, DecoderConfig] = {
    "gemma2-2b": _preset(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4,
    ),
    "gemma2-9b": _preset(
        hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8,
    ),
    "gemma2-27b": _preset(
        hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
        num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144.0,
    ),
}  # fmt: skip


def gemma2_config(name: str, **overrides: object) -> DecoderConfig:
    """A Gemma 2 preset's :class:`DecoderConfig`, optionally with fields replaced.

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(GEMMA2_PRESETS, "Gemma 2", name, overrides)


GEMMA2 = Family(
    model_type="gemma2",
    architecture="Gemma2ForCausalLM",
    build=build_gemma2,
    read=_read,
    write=_write,
    drop_keys=("mlp_bias",),
    activations=("gelu_pytorch_tanh",),
    activation_key="hidden_activation",
    presets=GEMMA2_PRESETS,
)
