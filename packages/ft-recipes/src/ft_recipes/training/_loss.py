"""Chunked linear cross-entropy: output projection fused with the loss, never ``[b, s, v]`` fp32 logits.

The output projection (``lm_head`` plus any family soft-cap, through ``output_projection``) and the
cross-entropy run on chunks of trained positions only, so no more than one chunk's ``[chunk, v]``
logits exist at a time. The cross-entropy is computed in fp32 whatever the compute dtype.

Two ways to get the gradient without keeping every chunk's logits:

* **Gradient in the forward** (the default for the plain loss, as the fused losses of Liger-Kernel,
  Hsu et al. 2024, arXiv:2410.10989, do): while a chunk's logits exist, the forward already takes the
  gradient of that chunk's summed loss with respect to the chunk's hidden states and to the
  projection's trainable parameters (``torch.autograd.grad`` on the chunk's own small graph), keeps
  those (``[n, d]`` and one copy of each parameter) and frees the logits. The backward only multiplies
  them by the incoming scalar gradient: the loss is linear in it. The output projection runs once per
  step instead of twice.
* **Recompute** (``torch.utils.checkpoint`` per chunk): the backward recomputes a chunk's logits. Used
  where the upstream gradient is not one scalar (``return_logprobs``: preference losses weight each
  position) and for fp16, whose gradients must pass through the loss scaler's multiplier before any
  fp16 product (the forward cannot know it).

The loss is a sum over trained tokens divided by ``normalizer``, the trained-token count of the whole
accumulation window (all-reduced across ranks when distributed): summing per-micro-batch losses that
were each divided by the same window total gives exactly the full-batch mean, while averaging
per-micro-batch means weights a short micro-batch's tokens more (the well-known accumulation bug).

Legend: b batch, s sequence, d hidden size, v vocabulary, n trained positions, c chunk length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import ft_models
from ft_recipes.training.errors import LossError

__all__ = ["IGNORE_INDEX", "batch_loss", "linear_cross_entropy"]

IGNORE_INDEX = -100


def _projection_leaves(
    projection: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor
) -> list[torch.Tensor]:
    """The trainable leaf tensors ``projection`` reads (a tied embedding, a soft-capped ``lm_head``...).

    Found by projecting zero rows and walking the autograd graph to its ``AccumulateGrad`` nodes, so any
    callable works (precision casts of the weight sit between the projection and its leaf).
    """
    with torch.enable_grad():
        probe = projection(like[:0].detach())  # [0, v]: no arithmetic
    leaves: list[torch.Tensor] = []
    seen: set[object] = set()
    stack = [probe.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        else:
            stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _cross_entropy_and_grad(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed fp32 cross-entropy of a chunk and its gradient with respect to the logits.

    The same numbers as ``F.cross_entropy(logits.float(), targets, reduction="sum")`` and its backward,
    in a third of the memory passes: one fp32 working copy that is shifted, exponentiated and scaled in
    place (one ``exp`` per logit instead of log-softmax's and its backward's two), and the gradient
    ``softmax - onehot`` written once, in the logits' dtype (one rounding of the fp32 value), which is
    what the projection's backward reads.

    Args:
        logits: ``[c, v]``, no graph.
        targets: ``[c]`` class ids (no ignored positions).

    Returns:
        ``(loss, grad)``: the 0-d fp32 sum and ``[c, v]`` in ``logits``' dtype.
    """
    work = logits.float() if logits.dtype != torch.float32 else logits.clone()  # [c, v] fp32, ours
    work.sub_(work.amax(-1, keepdim=True))  # shifted: every exponent <= 0
    rows = torch.arange(work.shape[0], device=work.device)
    target_logits = work[rows, targets]  # [c], shifted
    work.exp_()
    sums = work.sum(-1)  # [c]
    loss = (sums.log() - target_logits).sum()
    work[rows, targets] -= sums  # exp - sum at the target: (p - 1) * sum
    grad = torch.empty_like(logits)
    torch.mul(work, sums.reciprocal().unsqueeze(1), out=grad)  # softmax - onehot, rounded once
    return loss, grad


class _GradInForwardCE(torch.autograd.Function):
    """Summed chunked cross-entropy whose gradients are computed in the forward (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        projection: Callable[[torch.Tensor], torch.Tensor],
        chunk_size: int,
        trained: torch.Tensor,
        targets: torch.Tensor,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        want_hidden = trained.requires_grad
        grad_hidden = torch.empty_like(trained) if want_hidden else None  # [n, d]
        grad_params = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=trained.device)
        for start in range(0, trained.shape[0], chunk_size):
            stop = start + chunk_size
            with torch.enable_grad():
                hidden = trained[start:stop].detach().requires_grad_(want_hidden)  # [c, d]
                logits = projection(hidden)  # [c, v] in the compute dtype, freed at the end of the chunk
            loss, grad_logits = _cross_entropy_and_grad(logits.detach(), targets[start:stop])
            inputs = ([hidden] if want_hidden else []) + list(params)
            grads = torch.autograd.grad(logits, inputs, grad_logits) if inputs else ()
            if want_hidden:
                assert grad_hidden is not None
                grad_hidden[start:stop] = grads[0]
                grads = grads[1:]
            for acc, grad in zip(grad_params, grads, strict=True):
                acc += grad
            total += loss
        ctx.save_for_backward(*(([grad_hidden] if grad_hidden is not None else []) + grad_params))
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_total: torch.Tensor) -> tuple[object, ...]:  # type: ignore[override]
        # The saved gradients times the fp32 0-d upstream gradient: multiplying by the 0-d tensor (not by
        # it cast to a gradient's dtype) reads the factor at fp32, so a bf16 gradient is rounded once
        # (checked bitwise against the fp32 product rounded to bf16 on CPU), in one pass.
        saved = [g * grad_total for g in ctx.saved_tensors]  # type: ignore[attr-defined]
        grad_hidden = saved.pop(0) if ctx.needs_input_grad[2] else None  # type: ignore[attr-defined]
        return (None, None, grad_hidden, None, *saved)


def _chunk_loss(
    projection: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = projection(hidden).float()  # [c, v] fp32, freed when the chunk ends
    return F.cross_entropy(logits, targets, reduction="none")  # [c]


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    output_projection: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    normalizer: int | float | torch.Tensor,
    chunk_size: int = ...,
    return_logprobs: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    output_projection: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    normalizer: int | float | torch.Tensor,
    chunk_size: int = ...,
    return_logprobs: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def linear_cross_entropy(
    hidden: torch.Tensor,
    output_projection: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    normalizer: int | float | torch.Tensor,
    chunk_size: int = 128,
    return_logprobs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross-entropy over trained positions, divided by ``normalizer``.

    Args:
        hidden: final-normed hidden states ``[b, s, d]`` (``model(..., return_hidden=True)``).
        output_projection: hidden ``[..., d]`` -> logits ``[..., v]`` (``model.output_projection``, which
            includes a family's final soft-cap).
        labels: ``[b, s]`` target ids, already shifted; ``-100`` marks positions not trained on.
        normalizer: trained tokens in the whole accumulation window (a positive number or 0-d tensor).
        chunk_size: trained positions per projection chunk; bounds the logits held at once to
            ``[chunk_size, v]``.
        return_logprobs: also return per-position log-probabilities of the labels ``[b, s]`` (0 where
            not trained), differentiable, for preference losses that sum them per sequence.

    Returns:
        The scalar fp32 loss, or ``(loss, logprobs)``. With no trained position the loss is an exact 0
        that still carries a graph (so a backward is harmless); callers decide whether that is an error.

    Raises:
        LossError: shapes that do not match, a non-positive ``normalizer`` or ``chunk_size``.
    """
    if hidden.shape[:-1] != labels.shape:
        raise LossError(
            f"linear_cross_entropy: hidden {tuple(hidden.shape)} does not match labels {tuple(labels.shape)}"
        )
    if chunk_size < 1:
        raise LossError(f"linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    if not isinstance(normalizer, torch.Tensor) and normalizer <= 0:
        raise LossError(f"linear_cross_entropy: normalizer must be > 0, got {normalizer}")
    flat_labels = labels.reshape(-1)  # [b*s]
    index = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)  # [n]
    trained = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # [n, d]
    targets = flat_labels.index_select(0, index)  # [n]
    if not return_logprobs and hidden.dtype != torch.float16 and torch.is_grad_enabled():
        leaves = _projection_leaves(output_projection, trained)
        if trained.requires_grad or leaves:
            total = _GradInForwardCE.apply(output_projection, chunk_size, trained, targets, *leaves)
            return total / normalizer
    pieces = [
        checkpoint(_chunk_loss, output_projection, h, t, use_reentrant=False)
        for h, t in zip(trained.split(chunk_size), targets.split(chunk_size), strict=True)
    ]
    token_losses = torch.cat(pieces) if pieces else trained.sum(-1).float() * 0.0  # [n]
    loss = token_losses.sum() / normalizer
    if not return_logprobs:
        return loss
    logprobs = torch.zeros(flat_labels.shape, dtype=torch.float32, device=hidden.device)  # [b*s]
    logprobs = logprobs.index_put((index,), -token_losses)
    return loss, logprobs.view(labels.shape)  # [b, s]


def batch_loss(
    model: ft_models.CausalLM, batch: Mapping[str, torch.Tensor], *, normalizer: int | float | torch.Tensor
) -> torch.Tensor:
    """The forward of one collated batch and its :func:`linear_cross_entropy` (training and validation).

    Args:
        model: The model.
        batch: ``input_ids``, ``labels``, ``position_ids`` and ``document_ids``, each ``[b, s]``, on the
            model's device (what ``ft_data``'s collator makes).
        normalizer: As for :func:`linear_cross_entropy`.

    Returns:
        The scalar fp32 loss.
    """
    hidden = model(
        batch["input_ids"],
        position_ids=batch["position_ids"],
        document_ids=batch["document_ids"],
        return_hidden=True,
    )  # [b, s, d]
    return linear_cross_entropy(hidden, model.output_projection, batch["labels"], normalizer=normalizer)
