"""A linear layer over a frozen quantised weight that never keeps the dense weight for the backward.

QLoRA's memory promise (Dettmers et al., 2023) is a 4-bit base plus activations. Written as plain
autograd, ``F.linear(x, dequantize(W_q))`` saves its dense operand for the input gradient, so with
activation checkpointing off every layer's dequantised weight would sit in memory from its forward to its
backward: the whole dense base at once. Here the backward saves only the stored (packed) tensors, which
the module holds anyway, and dequantises again to form ``grad_x = grad_y W``: one extra dequantisation
per layer per step (cheap next to the matmul) for a dense weight that lives only while its own matmul
runs. bitsandbytes' ``MatMul4Bit`` makes the same trade.

Both directions are custom operators (``ft_peft::dequant_linear`` and its backward) with their autograd
formula registered, not an ``autograd.Function`` around traceable ops: under ``torch.compile`` a traced
function's two dequantisations become one node after common-subexpression elimination, and the
partitioner may then save that dense node for the backward (it does for DoRA). An operator is opaque to
the compiler, so the dense weight is never a graph value that could be saved; dynamo still traces it
without a graph break.

The frozen weight gets no gradient (its stored tensors are integer codes). A bias gets one only if it
requires it (a LoRA wrapper freezes it).

Shape legend: ... leading (batch, sequence) dims, d_in input features, d_out output features.
"""

# No `from __future__ import annotations`: torch.library reads the operators' schemas from real annotations.

from typing import Any, Optional

import torch
import torch.nn.functional as F

from ft_peft._quant import QuantConfig, dequantize_weight

__all__ = ["dequant_linear"]


def _keys(kind: str, double_quant: bool) -> tuple[str, ...]:
    """The stored tensors' suffixes, in the order the operators take them (``quantize_weight``'s keys)."""
    if kind == "int8":
        return ("", "scale")
    return ("", "absmax", "nested_absmax", "nested_code", "nested_offset") if double_quant else ("", "absmax")


def _dequantize(
    stored: list[torch.Tensor],
    shape: list[int],
    kind: str,
    blocksize: int,
    double_quant: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    cfg = QuantConfig(kind, double_quant, blocksize, dtype)  # type: ignore[arg-type]
    tensors = dict(zip(_keys(kind, double_quant), stored, strict=True))
    return dequantize_weight(tensors, (shape[0], shape[1]), cfg, dtype)


@torch.library.custom_op("ft_peft::dequant_linear", mutates_args=())
def _dequant_linear_op(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],  # noqa: UP045  (torch.library's schema parser wants Optional)
    stored: list[torch.Tensor],
    shape: list[int],
    kind: str,
    blocksize: int,
    double_quant: bool,
) -> torch.Tensor:
    weight = _dequantize(stored, shape, kind, blocksize, double_quant, x.dtype)  # [d_out, d_in]
    return F.linear(x, weight, bias)  # [..., d_out]; `weight` is freed on return


@_dequant_linear_op.register_fake
def _(x, bias, stored, shape, kind, blocksize, double_quant):  # type: ignore[no-untyped-def]
    return x.new_empty(*x.shape[:-1], shape[0])


@torch.library.custom_op("ft_peft::dequant_linear_backward", mutates_args=())
def _dequant_linear_backward_op(
    grad_out: torch.Tensor,
    stored: list[torch.Tensor],
    shape: list[int],
    kind: str,
    blocksize: int,
    double_quant: bool,
) -> torch.Tensor:
    weight = _dequantize(stored, shape, kind, blocksize, double_quant, grad_out.dtype)  # again
    return grad_out.matmul(weight)  # [..., d_out] @ [d_out, d_in] -> [..., d_in]


@_dequant_linear_backward_op.register_fake
def _(grad_out, stored, shape, kind, blocksize, double_quant):  # type: ignore[no-untyped-def]
    return grad_out.new_empty(*grad_out.shape[:-1], shape[1])


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    _, bias, stored, shape, kind, blocksize, double_quant = inputs
    ctx.save_for_backward(*stored)  # the packed codes and statistics: what the module holds anyway
    ctx.quant = (shape, kind, blocksize, double_quant)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
    stored = list(ctx.saved_tensors)  # read once: activation checkpointing unpacks each saved tensor once
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = _dequant_linear_backward_op(grad_out, stored, *ctx.quant)
    if ctx.has_bias and ctx.needs_input_grad[1]:
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)  # [d_out]
    return grad_x, grad_bias, [None] * len(stored), None, None, None, None


_dequant_linear_op.register_autograd(_backward, setup_context=_setup_context)


def dequant_linear(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    stored: dict[str, torch.Tensor],
    shape: tuple[int, int],
    cfg: QuantConfig,
) -> torch.Tensor:
    """``F.linear(x, dequantize(stored), bias)`` whose backward dequantises again instead of saving W.

    Args:
        x: `[..., d_in]` input, already in the dtype to dequantise to (the compute dtype).
        bias: `[d_out]` in ``x``'s dtype, or None.
        stored: The quantised weight's tensors, keyed as ``quantize_weight`` returns them.
        shape: `(d_out, d_in)` of the dense weight.
        cfg: The quantisation settings the tensors were made with.

    Returns:
        `[..., d_out]` in ``x``'s dtype. Only ``stored`` (already held by the caller) is saved for the
        backward, never the `[d_out, d_in]` dense weight.
    """
    ordered = [stored[key] for key in _keys(cfg.kind, cfg.double_quant)]
    out: torch.Tensor = _dequant_linear_op(
        x, bias, ordered, list(shape), cfg.kind, cfg.blocksize, cfg.double_quant
    )
    return out
