"""Packed-row attention as one opaque operator inside compiled graphs.

:func:`~._segments.attend_groups` loops in Python over the batch's document lengths, so a compiled
block that traced it would be specialised to one packing layout and recompiled for the next batch.
Under ``torch.compile`` the layer therefore calls ``ft_models::segment_attention``, a custom operator
whose inputs are the layer's tensors and the layout as tensors of shapes fixed by ``b`` and ``s``
(the gather order, its inverse, and the CPU table of documents per length): one graph serves every
layout, and the operator composes with activation checkpointing (a compiled checkpointed block
contains it like any other op; nothing is mutated). Its backward recomputes the attention forward
under ``torch.func.vjp`` (custom operators run below autograd) and returns the input gradients, so
the operator saves only ``q``/``k``/``v``.

The operator needs the kernel by name: :class:`SDPAKernel`, :class:`EagerKernel` (with or without a
:func:`soft_cap` modifier), ``GroupedKernel`` and ``AutoKernel`` expose ``op_spec``; ``auto`` is
resolved with the caller's gradient flag, so the forward and the recomputed backward pick the same
kernel. A kernel without ``op_spec`` runs the Python loop even when compiled (correct, but compiled
per layout).

Eager calls never take the operator: they run :func:`attend_groups` under ordinary autograd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._segments import DocumentSegments, attend_groups

if TYPE_CHECKING:
    from ._attention import AttentionKernel

__all__ = ["attend_segments"]


def _groups(counts_by_length: torch.Tensor) -> list[tuple[int, int]]:
    lengths = counts_by_length.nonzero().squeeze(1).tolist()  # a CPU tensor: no device sync
    return [(n, int(counts_by_length[n])) for n in lengths]


def _kernel(name: str, cap: float, grad: bool) -> AttentionKernel:
    from ._attention import soft_cap
    from ._kernel_choice import AutoKernel, attention_kernel

    if name == "auto" and not cap:
        return AutoKernel(grad=grad)
    return attention_kernel(name, soft_cap(cap) if cap else None)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    counts_by_length: torch.Tensor,
    window: int,
    scale: float,
    kernel: str,
    cap: float,
    grad: bool,
) -> torch.Tensor:
    return attend_groups(
        q,
        k,
        v,
        order,
        inverse,
        _groups(counts_by_length),
        _kernel(kernel, cap, grad),
        window if window > 0 else None,
        scale,
    )


@torch.library.custom_op("ft_models::segment_attention", mutates_args=())
def _segment_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    counts_by_length: torch.Tensor,
    window: int,
    scale: float,
    kernel: str,
    cap: float,
    grad: bool,
) -> torch.Tensor:
    return _forward(q, k, v, order, inverse, counts_by_length, window, scale, kernel, cap, grad)


def _row_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[b, n, s, h_d]`` laid out as ``[b, s, n, h_d]`` (the layout the projections give), copied
    only when it is not: the real and the fake implementations must agree on strides."""
    b, n, s, h_d = x.shape
    out = x.new_empty(b, s, n, h_d).transpose(1, 2)
    return x if x.stride() == out.stride() else out.copy_(x)


@_segment_attention.register_fake
def _(q: torch.Tensor, *_: Any) -> torch.Tensor:
    b, n_h, s, h_d = q.shape
    return q.new_empty(b, s, n_h, h_d).transpose(1, 2)


@torch.library.custom_op("ft_models::segment_attention_backward", mutates_args=())
def _segment_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    order: torch.Tensor,
    inverse: torch.Tensor,
    counts_by_length: torch.Tensor,
    window: int,
    scale: float,
    kernel: str,
    cap: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _forward(q, k, v, order, inverse, counts_by_length, window, scale, kernel, cap, True)

    vjp = torch.func.vjp(forward, q, k, v)[1]  # (outputs, vjp_fn) without has_aux
    grads: tuple[torch.Tensor, ...] = tuple(vjp(grad_out))
    return _row_major(grads[0]), _row_major(grads[1]), _row_major(grads[2])


@_segment_attention_backward.register_fake
def _(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(
        x.new_empty(x.shape[0], x.shape[2], x.shape[1], x.shape[3]).transpose(1, 2) for x in (q, k, v)
    )  # type: ignore[return-value]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    q, k, v, order, inverse, counts, window, scale, kernel, cap, _ = inputs
    ctx.save_for_backward(q, k, v, order, inverse, counts)
    ctx.args = (window, scale, kernel, cap)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    q, k, v, order, inverse, counts = ctx.saved_tensors
    dq, dk, dv = _segment_attention_backward(grad_out, q, k, v, order, inverse, counts, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_segment_attention.register_autograd(_backward, setup_context=_setup_context)


def attend_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    segments: DocumentSegments,
    kernel: AttentionKernel,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """Block-causal attention of packed rows: the Python loop eagerly, the custom operator when compiled.

    Args:
        q: ``[b, n_h, s, h_d]``.
        k: ``[b, n_kv, s, h_d]``.
        v: ``[b, n_kv, s, h_d]``.
        segments: The batch's layout.
        kernel: The layer's kernel.
        window: Sliding window or ``None``.
        scale: Dot-product scale.

    Returns:
        ``[b, n_h, s, h_d]``; zero at padding.
    """
    spec = getattr(kernel, "op_spec", None)
    if torch.compiler.is_compiling() and spec is not None:
        name, cap = spec
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        return _segment_attention(
            q,
            k,
            v,
            segments.order,
            segments.inverse,
            segments.counts_by_length,
            window or 0,
            scale,
            name,
            cap,
            grad,
        )
    s = segments
    return attend_groups(q, k, v, s.order, s.inverse, s.groups, kernel, window, scale)
