"""Grouped-query attention (GQA, Ainslie et al. 2023, arXiv:2305.13245) with pluggable kernels.

The module owns the projections (named ``q_proj``/``k_proj``/``v_proj``/``o_proj`` as in transformers,
so HF state dicts and PEFT ``target_modules`` match), applies RoPE, appends to a KV cache layer when
given one, and hands ``q``/``k``/``v`` to a kernel. Kernels are small callables (``AttentionKernel``):

* :class:`SDPAKernel` (default): ``torch.nn.functional.scaled_dot_product_attention`` with
  ``enable_gqa=True`` (k/v are never expanded by hand); ``is_causal=True`` and no mask on the causal
  path, a boolean mask otherwise. Every call goes to SDPA.
* :class:`EagerKernel`: explicit fp32 scores and softmax, with an optional ``score_mod`` applied to the
  scores before masking (e.g. Gemma 2's tanh soft-capping). Families that modify scores plug a
  modifier into this kernel; a sliding window is a property of the attention layer (``window``) that
  every kernel honours through the mask. No family flags.
* :func:`grouped_matmul_attention`: batched products around ATen's softmax kernels, the fast CPU path
  for bf16 training.

The layer does not build masks: the :class:`AttentionMask` of the forward decides how to call the
kernel (:meth:`AttentionMask.attend`). Packed and padded rows reach the kernel one document at a time
on its causal path (:mod:`._segments`), and so do sliding windows (in blocks), so no kernel sees an
``s x s`` mask for a training batch; dense masks remain for KV caches.

Which kernel a model runs is chosen from outside the model by name (``auto``, ``sdpa``, ``grouped``,
``eager``; see :mod:`._kernel_choice`): the kernels themselves never reroute a call.

Shape legend: b batch, s new tokens, t keys, d model dim, n_h query heads, n_kv key/value heads,
h_d head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ._mask import AttentionMask
from ._rope import apply_rotary

if TYPE_CHECKING:
    from ._cache import KVCacheLayer

__all__ = [
    "AttentionKernel",
    "EagerKernel",
    "GroupedQueryAttention",
    "SDPAKernel",
    "ScoreMod",
    "grouped_matmul_attention",
    "soft_cap",
]

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


class _GroupedAttention(torch.autograd.Function):
    """``softmax(q k^T * scale + bias) v`` as batched matrix products over query-head groups.

    The ``g`` query heads that share a key/value head are stacked along the query axis, so every
    product is one ``bmm`` over ``b * n_kv`` batches of ``g * s`` rows against the head's ``t`` keys:
    keys and values are never copied per head, and ``dk``/``dv`` come out summed over the group. Each
    elementwise step is one ATen kernel (eager mode has no fusion): the scale rides on the product
    (``baddbmm``'s ``alpha``), the mask is an added 0 / -inf bias, the softmax and its backward
    (``dS = P * (dP - rowsum(dP * P))``) compute in fp32 inside the kernels and store ``q``'s dtype.
    The forward keeps the probabilities for the backward instead of recomputing them.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, ...]:
        b, n_h, s, h_d = q.shape
        n_kv, t = k.shape[1], k.shape[2]
        g = n_h // n_kv
        qg = q.reshape(b * n_kv, g * s, h_d)  # query heads i*g .. i*g+g-1 share key/value head i
        kg, vg = k.reshape(b * n_kv, t, h_d), v.reshape(b * n_kv, t, h_d)
        scores = torch.baddbmm(qg.new_empty(b * n_kv, g * s, t), qg, kg.transpose(1, 2), beta=0, alpha=scale)
        scores.view(b, n_kv, g, s, t).add_(bias.view(bias.shape[0], 1, 1, s, t))
        probs = torch.softmax(scores, dim=-1)  # [b * n_kv, g * s, t]
        return torch.bmm(probs, vg).view(b, n_h, s, h_d), probs

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        # A separate setup_context lets torch.func transforms (the compiled packed-row backward) run it.
        q, k, v, _, scale = inputs
        b, n_h, s, h_d = q.shape
        n_kv, t = k.shape[1], k.shape[2]
        probs = output[1]
        qg = q.reshape(b * n_kv, (n_h // n_kv) * s, h_d)
        ctx.save_for_backward(qg, k.reshape(b * n_kv, t, h_d), v.reshape(b * n_kv, t, h_d), probs)
        ctx.scale = scale
        ctx.mark_non_differentiable(probs)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        qg, kg, vg, probs = ctx.saved_tensors
        b, n_h, s, h_d = grad_out.shape
        n_kv, t = kg.shape[0] // b, kg.shape[1]
        dout = grad_out.reshape(b * n_kv, -1, h_d)  # [b * n_kv, g * s, h_d]
        dv = torch.bmm(probs.transpose(1, 2), dout)
        dprobs = torch.bmm(dout, vg.transpose(1, 2))  # [b * n_kv, g * s, t]
        dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
        dq = torch.baddbmm(torch.empty_like(qg), dscores, kg, beta=0, alpha=ctx.scale)
        dk = torch.baddbmm(torch.empty_like(kg), dscores.transpose(1, 2), qg, beta=0, alpha=ctx.scale)
        return dq.view(b, n_h, s, h_d), dk.view(b, n_kv, t, h_d), dv.view(b, n_kv, t, h_d), None, None


def grouped_matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Grouped-query attention as batched matrix products around a masked softmax.

    Query head ``i`` attends with key/value head ``i // g``, as ``F.scaled_dot_product_attention`` with
    ``enable_gqa=True`` pairs them. The scores are ``scale * (q @ k^T)`` accumulated in fp32 and stored
    in ``q``'s dtype (the numerics of transformers' eager attention; SDPA's fused kernels keep them in
    fp32), the softmax and its backward compute in fp32 and store ``q``'s dtype, and the backward
    reuses the forward's probabilities instead of recomputing them.

    Why it exists: PyTorch's CPU flash-attention kernel runs bf16 far below the CPU's bf16 matrix
    product speed, while these six products run near it, so a bf16 training step on the CPU is faster
    with them, eager or compiled (figures: bench/README.md, "Measurements behind code choices"). In
    fp32 SDPA is as fast, and without gradients the gain is small, so the ``auto`` setting
    (:func:`auto_attention_kernel`) uses this kernel only for bf16 CPU calls that autograd will
    differentiate, and only up to 1024 keys: the saved probabilities grow with ``s * t``, where flash
    attention's state grows with ``s``.

    Args:
        q: ``[b, n_h, s, h_d]``.
        k: ``[b, n_kv, t, h_d]``.
        v: ``[b, n_kv, t, h_d]``.
        mask: ``[b or 1, 1, s, t]`` bool (True = attend; every query attends to some key) or ``None``
            for plain causal with ``s == t``.
        scale: Multiplier of the dot products.

    Returns:
        ``[b, n_h, s, h_d]`` in ``q``'s dtype.
    """
    return _GroupedAttention.apply(q, k, v, _mask_bias(mask, q), scale)[0]


def _mask_bias(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """The additive form of a kernel's mask: 0 where attending, -inf elsewhere, in ``q``'s dtype.

    ``[b or 1, 1, s, t]``; ``None`` (plain causal, ``s == t``) gives ``[1, 1, s, s]``.
    """
    if mask is None:
        s = q.shape[2]
        return torch.full((1, 1, s, s), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    return torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))


class SDPAKernel:
    """PyTorch's fused scaled-dot-product attention (flash / memory-efficient / math backends)."""

    op_spec = ("sdpa", 0.0)  # how the compiled packed-row operator names this kernel (_segment_op)

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

    @property
    def op_spec(self) -> tuple[str, float] | None:
        """This kernel by name for the compiled packed-row operator; ``None`` for a modifier it cannot name."""
        if self.score_mod is None:
            return ("eager", 0.0)
        return ("eager", self.score_mod.cap) if isinstance(self.score_mod, _SoftCap) else None

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
        out = mask.attend(q, k, v, self.kernel, self.window, self.scale)  # [b, n_h, s, h_d]
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)  # [b, s, n_h * h_d]
        return self.o_proj(out)
