"""Pieces every family builder wires together: per-layer attention, embedding, the causal LM shell.

Builders (``_llama.py``, ``_qwen2.py``, ``_qwen3.py``, ``_mistral.py``, ``_gemma2.py``) differ in which
modules they inject (norm variant, q/k norms, biases, MLP activation, pre/post norms, score and logit
modifiers); the shared wiring lives here so a family module only states its differences. Everything
is meta-device safe: only shapes are declared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._attention import AttentionKernel, GroupedQueryAttention
from ._config import DecoderConfig
from ._decoder import CausalLM, TransformerDecoder
from ._rope import RotaryEmbedding

__all__ = ["attention", "causal_lm"]


def attention(
    config: DecoderConfig,
    layer: int,
    *,
    kernel: AttentionKernel | None,
    bias: bool,
    o_bias: bool,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
) -> GroupedQueryAttention:
    """The attention of layer ``layer``, with its sliding window and scale taken from ``config``.

    Args:
        config: Shapes; ``config.window(layer)`` and ``query_pre_attn_scalar`` are honoured.
        layer: Layer index (windows may differ per layer).
        kernel: Attention kernel (SDPA when ``None``).
        bias: Bias on q/k/v.
        o_bias: Bias on the output projection.
        q_norm: Per-head query norm (over ``h_d``), or ``None``.
        k_norm: Per-head key norm, or ``None``.
    """
    c = config
    scale = c.query_pre_attn_scalar**-0.5 if c.query_pre_attn_scalar is not None else None
    return GroupedQueryAttention(
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        kernel=kernel,
        bias=bias,
        o_bias=o_bias,
        window=c.window(layer),
        q_norm=q_norm,
        k_norm=k_norm,
        scale=scale,
    )


def causal_lm(
    config: DecoderConfig,
    layers: Sequence[nn.Module],
    norm: nn.Module,
    *,
    embed_scale: float = 1.0,
    logit_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> CausalLM:
    """Wrap ``layers`` with the embedding, final norm, rotary embedding and ``lm_head``.

    Args:
        config: Shapes.
        layers: Decoder layers in order.
        norm: Final norm.
        embed_scale: Multiplier of the token embeddings.
        logit_transform: Applied to logits by :meth:`CausalLM.output_projection` (final soft-cap).
    """
    c = config
    decoder = TransformerDecoder(
        # An explicit empty weight skips nn.Embedding's random init: it would be wasted work, and on the
        # meta device it runs a reference decomposition that imports sympy and dynamo (~170 MB).
        embed_tokens=nn.Embedding(
            c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size)
        ),
        layers=layers,
        norm=norm,
        rotary_emb=RotaryEmbedding(c.rope, c.head_dim),
        embed_scale=embed_scale,
    )
    lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
    model = CausalLM(config, decoder, lm_head, logit_transform=logit_transform)
    if not model.model.rotary_emb.inv_freq.is_meta:
        model.model.rotary_emb.reset_parameters()
    return model
