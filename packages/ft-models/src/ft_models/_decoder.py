"""Decoder-only transformer composed from injected modules (pre-norm, Vaswani et al. 2017).

``TransformerDecoder`` owns the token embedding, the layer stack, the final norm and the rotary
embedding; each :class:`DecoderLayer` receives its attention, MLP and norms from a builder, so a new
family is a new builder and LoRA is a module swap. :class:`SandwichDecoderLayer` adds norms after
attention and MLP as well (Gemma 2). :class:`CausalLM` adds the output projection with
module paths equal to transformers' (``model.embed_tokens``, ``model.layers.{i}.self_attn.q_proj``,
``model.norm``, ``lm_head``), so an HF state dict loads with no renaming. The model is meta-device
safe: ``__init__`` only declares shapes; values come from :meth:`CausalLM.reset_parameters` or loading.

Shape legend: b batch, s sequence, d model dim, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._attention import GroupedQueryAttention
from ._cache import KVCache, KVCacheLayer
from ._config import DecoderConfig
from ._mask import AttentionMask
from ._norm import RMSNorm, UnitOffsetRMSNorm
from ._rope import RotaryEmbedding
from ._segments import DocumentSegments

__all__ = [
    "CausalLM",
    "DecoderLayer",
    "SandwichDecoderLayer",
    "TransformerDecoder",
    "positions_from_documents",
]


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    Args:
        self_attn: Attention module.
        mlp: Feed-forward module ``[b, s, d] -> [b, s, d]``.
        input_layernorm: Norm before attention.
        post_attention_layernorm: Norm before the MLP.
    """

    def __init__(
        self,
        self_attn: GroupedQueryAttention,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        kv_cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        """Apply the block to ``x`` ``[b, s, d]`` (appending this layer's k/v to ``kv_cache``)."""
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class SandwichDecoderLayer(nn.Module):
    """Pre- and post-norm block (Gemma 2): ``x + norm(attn(norm(x)))`` then ``x + norm(mlp(norm(x)))``.

    The norm names are transformers' Gemma 2 names, so its state dicts load unchanged. Note that
    ``post_attention_layernorm`` here normalises the attention *output*, unlike in
    :class:`DecoderLayer`, where it is the norm before the MLP.

    Args:
        self_attn: Attention module.
        mlp: Feed-forward module ``[b, s, d] -> [b, s, d]``.
        input_layernorm: Norm before attention.
        post_attention_layernorm: Norm of the attention output.
        pre_feedforward_layernorm: Norm before the MLP.
        post_feedforward_layernorm: Norm of the MLP output.
    """

    def __init__(
        self,
        self_attn: GroupedQueryAttention,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
        pre_feedforward_layernorm: nn.Module,
        post_feedforward_layernorm: nn.Module,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.pre_feedforward_layernorm = pre_feedforward_layernorm
        self.post_feedforward_layernorm = post_feedforward_layernorm

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        kv_cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        """Apply the block to ``x`` ``[b, s, d]`` (appending this layer's k/v to ``kv_cache``)."""
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, mask, kv_cache))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Per-document positions ``[b, s]``: each run of equal ids counts from 0.

    Packed documents thus get the positions they would have alone, and a left-padded row starts at 0
    at its first real token. Runs of ``-1`` (padding) count too; their positions are never used.
    """
    s = document_ids.shape[1]
    idx = torch.arange(s, device=document_ids.device).expand_as(document_ids)  # [b, s]
    is_start = torch.ones_like(document_ids, dtype=torch.bool)
    is_start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # [b, s]
    return idx - start


class TransformerDecoder(nn.Module):
    """Embedding, layers, final norm: ``input_ids [b, s] -> hidden [b, s, d]``.

    Args:
        embed_tokens: Token embedding ``[v, d]``.
        layers: The decoder layers, in order.
        norm: Final norm.
        rotary_emb: RoPE table producer shared by all layers.
        embed_scale: Multiplier of the embeddings (1 for Llama, ``sqrt(d)`` for Gemma), applied in the
            activation dtype as transformers does.
    """

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        layers: Sequence[nn.Module],
        norm: nn.Module,
        rotary_emb: RotaryEmbedding,
        *,
        embed_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.rotary_emb = rotary_emb
        self.embed_scale = embed_scale

    def attention_windows(self) -> tuple[int | None, ...]:
        """Every sliding-window size the layers' attention uses (``None``: full attention)."""
        windows = {getattr(getattr(layer, "self_attn", None), "window", None) for layer in self.layers}
        return tuple(sorted(windows, key=str))

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: DocumentSegments | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states ``[b, s, d]``; see :meth:`CausalLM.forward` for the arguments.

        The attention mask (or the documents' layout) is built here, once, before any layer runs.
        """
        b, s = input_ids.shape
        device = input_ids.device
        if cache is not None:
            new_valid = (
                document_ids >= 0
                if document_ids is not None
                else torch.ones(b, s, dtype=torch.bool, device=device)
            )
            position_ids, mask = cache.advance(new_valid, position_ids)
            mask = mask.prepare(self.attention_windows())
        else:
            mask = AttentionMask.for_documents(
                s, document_ids, device, windows=self.attention_windows(), segments=segments
            )
            if position_ids is None:
                position_ids = (
                    positions_from_documents(document_ids)
                    if document_ids is not None
                    else torch.arange(s, device=device).expand(b, s)
                )
        layer_caches = [cache.layer(i) for i in range(len(self.layers))] if cache is not None else None
        return self.forward_prepared(input_ids, self.rotary_emb(position_ids), mask, layer_caches)

    def forward_prepared(
        self,
        input_ids: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        layer_caches: Sequence[KVCacheLayer] | None = None,
    ) -> torch.Tensor:
        """Embed ``input_ids`` ``[b, s]``, run every layer and the final norm: hidden ``[b, s, d]``.

        :meth:`forward` prepares the mask, RoPE tables and per-layer cache views from a batch and a
        :class:`KVCache`; a caller that prepares them another way (the static decode step, which writes
        at a slot given as a tensor and masks the whole buffer) calls this with its own, so the
        embedding, its scale, the layer loop and the final norm exist once.

        Args:
            input_ids: ``[b, s]`` token ids.
            rope: ``(cos, sin)`` for the new tokens, each ``[b, s, h_d]`` fp32.
            mask: The attention mask every layer uses (each applies its own window).
            layer_caches: One cache view per layer (in layer order), or ``None`` without a cache.
        """
        h = self.embed_tokens(input_ids)  # [b, s, d]
        if self.embed_scale != 1.0:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask, layer_caches[i] if layer_caches is not None else None)
        return self.norm(h)


class CausalLM(nn.Module):
    """Decoder plus output projection, with transformers' module paths.

    Args:
        config: The configuration the model was built from (kept as ``model.config``).
        model: The decoder.
        lm_head: Output projection ``[v, d]`` (no bias).
        logit_transform: Optional function applied to logits (e.g. a final soft-cap).
    """

    def __init__(
        self,
        config: DecoderConfig,
        model: TransformerDecoder,
        lm_head: nn.Linear,
        *,
        logit_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.lm_head = lm_head
        self.logit_transform = logit_transform
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with ``lm_head`` when the config ties them (re-run after assigning)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Initialise weights: normal(0, std) for linear and embedding weights, identity norms.

        Materialise first when built on the meta device (``model.to_empty(device=...)``).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm | UnitOffsetRMSNorm | RotaryEmbedding):
                module.reset_parameters()
        self.tie_weights()

    def output_projection(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., v]`` from final hidden states ``[..., d]`` (with any family transform).

        A chunked loss calls this on slices so ``[b, s, v]`` fp32 logits are never materialised.
        """
        logits = self.lm_head(hidden)
        return self.logit_transform(logits) if self.logit_transform is not None else logits

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        segments: DocumentSegments | None = None,
    ) -> torch.Tensor:
        """Run the model.

        Args:
            input_ids: ``[b, s]`` token ids.
            position_ids: ``[b, s]`` RoPE positions; by default each document counts from 0 (from
                ``document_ids``), or each row continues its cached count.
            document_ids: ``[b, s]`` packed-document ids; ``-1`` marks padding (attends to nothing,
                attended by nothing; its outputs are meaningless and its labels ignored). ``None``:
                one document per row, no padding.
            cache: A :class:`KVCache` from :meth:`new_cache`; the new tokens are appended to it.
            return_hidden: Return final-normed hidden states ``[b, s, d]`` instead of logits.
            segments: The layout of ``document_ids``
                (``DocumentSegments.from_document_ids(document_ids_on_cpu, device)``), for a caller
                that holds the batch on the CPU before moving it: the model then copies nothing back
                to the host. Computed from ``document_ids`` when ``None``.

        Returns:
            Logits ``[b, s, v]`` (or hidden states ``[b, s, d]``).
        """
        hidden = self.model(
            input_ids, position_ids=position_ids, document_ids=document_ids, cache=cache, segments=segments
        )
        return hidden if return_hidden else self.output_projection(hidden)

    def new_cache(
        self,
        batch: int,
        max_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """Allocate a KV cache of ``max_len`` slots per row (prompt + new tokens, grown on demand).

        Args:
            batch: Rows.
            max_len: Initial slots per row.
            dtype: Buffer dtype; the embedding's dtype by default.
            device: Buffer device; the embedding's device by default.
        """
        weight = self.model.embed_tokens.weight
        c = self.config
        return KVCache(
            len(self.model.layers),
            batch,
            c.num_key_value_heads,
            c.head_dim,
            max_len,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
        )
