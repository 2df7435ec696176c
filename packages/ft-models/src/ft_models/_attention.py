"""Grouped-query attention (GQA, Ainslie et al. 2023, arXiv:2305.13245) with pluggable kernels.

The module owns the projections (named ``q_proj``/``k_proj``/``v_proj``/``o_proj`` as in transformers,
so HF state dicts and PEFT ``target_modules`` match), applies RoPE, appends to a KV cache layer when
given one, and hands ``q``/``k``/``v`` to a kernel. Kernels are small callables (``AttentionKernel``):

* :class:`SDPAKernel` (default): ``torch.nn.functional.scaled_dot_product_attention`` with
  ``enable_gqa=True`` (k/v are never expanded by hand); ``is_causal=True`` and no mask on the fast path
  (no documents, padding, cache or window), a boolean mask otherwise.
* :class:`EagerKernel`: explicit fp32 scores and softmax, with an optional ``score_mod`` applied to the
  scores before masking (e.g. Gemma 2's tanh soft-capping). Families that modify scores plug a
  modifier into this kernel; a sliding window is a property of the attention layer (``window``) that
  every kernel honours through the mask. No family flags.

Shape legend: b batch, s new tokens, t keys, d model dim, n_h query heads, n_kv key/value heads,
h_d head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ._mask import AttentionMask
from ._rope import apply_rotary

if TYPE_CHECKING:
    from ._cache import KVCacheLayer

__all__ = ["AttentionKernel", "EagerKernel", "GroupedQueryAttention", "SDPAKernel", "ScoreMod", "soft_cap"]

ScoreMod = Callable[[torch.Tensor], torch.Tensor]


class AttentionKernel(Protocol):
    """Computes attention outputs from projected, rotated heads.

    Args:
        q: ``[b, n_h, s, h_d]``.
        k: ``[b, n_kv, t, h_d]`` (``n_h`` a multiple of ``n_kv``).
        v: ``[b, n_kv, t, h_d]``.
        mask: ``[b or 1, 1, s, t]`` bool (True = attend) or ``None`` for plain causal with ``s == t``.
        scale: Multiplier of the dot products.

    Returns:
        ``[b, n_h, s, h_d]`` in ``q``'s dtype.
    """

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor: ...


class SDPAKernel:
    """PyTorch's fused scaled-dot-product attention (flash / memory-efficient / math backends)."""

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
        )

    def __repr__(self) -> str:
        return "SDPAKernel()"


class EagerKernel:
    """Explicit attention: fp32 scores, optional score modifier, masked fp32 softmax.

    Args:
        score_mod: Applied to the scaled fp32 scores ``[b, n_h, s, t]`` before masking.
    """

    def __init__(self, score_mod: ScoreMod | None = None) -> None:
        self.score_mod = score_mod

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)  # [b, n_h, t, h_d]
        v = v.repeat_interleave(groups, dim=1)  # [b, n_h, t, h_d]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [b, n_h, s, t]
        if self.score_mod is not None:
            scores = self.score_mod(scores)
        if mask is None:
            s, t = scores.shape[-2:]
            mask = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(t - s)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.matmul(probs, v)  # [b, n_h, s, h_d]

    def __repr__(self) -> str:
        return f"EagerKernel(score_mod={self.score_mod!r})"


class _SoftCap:
    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.tanh(scores / self.cap) * self.cap

    def __repr__(self) -> str:
        return f"soft_cap({self.cap})"


def soft_cap(cap: float) -> ScoreMod:
    """Modifier ``cap * tanh(x / cap)``: Gemma 2's attention-score and final-logit soft-capping.

    Args:
        cap: The bound; outputs lie in ``(-cap, cap)``.
    """
    return _SoftCap(cap)


class GroupedQueryAttention(nn.Module):
    """Self-attention with ``n_kv`` key/value heads shared by groups of query heads.

    Args:
        hidden_size: ``d``.
        num_heads: ``n_h``.
        num_kv_heads: ``n_kv``, dividing ``n_h``.
        head_dim: ``h_d`` (need not equal ``d / n_h``).
        kernel: Attention kernel; SDPA when ``None``.
        bias: Bias on q/k/v projections (Qwen-style qkv bias).
        o_bias: Bias on the output projection.
        window: Sliding-window size in tokens, ``None`` for full attention.
        q_norm: Optional per-head norm of queries (``[..., h_d]``) before RoPE.
        k_norm: Optional per-head norm of keys before RoPE.
        scale: Dot-product scale; ``1/sqrt(h_d)`` when ``None``.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        kernel: AttentionKernel | None = None,
        bias: bool = False,
        o_bias: bool = False,
        window: int | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        self.q_norm, self.k_norm = q_norm, k_norm
        self.kernel: AttentionKernel = kernel if kernel is not None else SDPAKernel()
        self.window = window
        self.scale = scale if scale is not None else head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        kv_cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: ``[b, s, d]`` normed hidden states.
            rope: ``(cos, sin)``, each ``[b, s, h_d]`` fp32.
            mask: Mask ingredients for this forward.
            kv_cache: This layer's cache; the new k/v are written at its current offset.

        Returns:
            ``[b, s, d]``.
        """
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)  # [b, s, n_h, h_d]
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)  # [b, s, n_kv, h_d]
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim)  # [b, s, n_kv, h_d]
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, n, s, h_d]
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # [b, n_kv, t, h_d]
        dense = None if mask.is_plain_causal(self.window) else mask.dense(self.window)
        out = self.kernel(q, k, v, dense, self.scale)  # [b, n_h, s, h_d]
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)  # [b, s, n_h * h_d]
        return self.o_proj(out)
