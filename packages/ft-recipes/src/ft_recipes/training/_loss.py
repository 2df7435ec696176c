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

Under a mixed precision policy the projection's weight (``lm_head``, or the tied embedding) is an fp32
master cast to the compute dtype by the unit's forward, on every call: once per chunk. Inside one loss
call the cast is made once and reused by every chunk (:class:`_CastOnce`), and the gradient-in-forward
path takes each chunk's gradient with respect to that cast copy, summing them in the master's dtype
(bit for bit what the cast's own backward, once per chunk, gave). The recompute path keeps casting per
chunk: reusing one cast there would hold a ``[v, d]`` copy from the forward until the backward.

The positions of the trained tokens come from ``labels`` (a ``nonzero``, which waits for an
accelerator), or from ``trained_index`` when the caller computed them on the CPU before moving the
batch (:func:`prepare_batch`, what the training step does), so no step waits for the device per
micro-batch.

The loss is a sum over trained tokens divided by ``normalizer``, the trained-token count of the whole
accumulation window (all-reduced across ranks when distributed): summing per-micro-batch losses that
were each divided by the same window total gives exactly the full-batch mean, while averaging
per-micro-batch means weights a short micro-batch's tokens more (the well-known accumulation bug).

Legend: b batch, s sequence, d hidden size, v vocabulary, n trained positions, c chunk length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

import ft_models
from ft_recipes.training.errors import LossError

__all__ = ["IGNORE_INDEX", "batch_loss", "linear_cross_entropy", "prepare_batch"]

IGNORE_INDEX = -100


class _CastOnce(TorchFunctionMode):
    """While active, a ``.to(...)`` of a trainable leaf tensor (a master weight) is made once and reused.

    The first call's result is kept (with its graph back to the leaf) and returned for every later call
    with the same arguments, so a precision cast of the output projection runs once per loss call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.casts: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}  # -> (leaf, cast)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        source = args[0] if args else None
        if func is not torch.Tensor.to or not isinstance(source, torch.Tensor):
            return func(*args, **kwargs)
        if not (source.is_leaf and source.requires_grad):
            return func(*args, **kwargs)
        key = (id(source), repr((args[1:], sorted(kwargs.items()))))
        hit = self.casts.get(key)
        if hit is not None and hit[0] is source:
            return hit[1]
        out = func(*args, **kwargs)
        if out is not source:
            self.casts[key] = (source, out)
        return out

    def cast_of(self, leaf: torch.Tensor) -> torch.Tensor | None:
        """The one cast made of ``leaf`` in this loss call, if any."""
        found = [cast for source, cast in self.casts.values() if source is leaf]
        return found[0] if len(found) == 1 else None


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
        casts: _CastOnce,
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
            with torch.enable_grad(), casts:
                hidden = trained[start:stop].detach().requires_grad_(want_hidden)  # [c, d]
                logits = projection(hidden)  # [c, v] in the compute dtype, freed at the end of the chunk
            loss, grad_logits = _cross_entropy_and_grad(logits.detach(), targets[start:stop])
            # A master reached through its (one) cast: the gradient of the cast copy, summed in the master's
            # dtype below, is what the cast's backward would give, without a [v, d] cast per chunk.
            through = [c if (c := casts.cast_of(p)) is not None else p for p in params]
            inputs = ([hidden] if want_hidden else []) + through
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
        grad_hidden = saved.pop(0) if ctx.needs_input_grad[3] else None  # type: ignore[attr-defined]
        return (None, None, None, grad_hidden, None, *saved)


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
    trained_index: torch.Tensor | None = ...,
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
    trained_index: torch.Tensor | None = ...,
    return_logprobs: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def linear_cross_entropy(
    hidden: torch.Tensor,
    output_projection: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    *,
    normalizer: int | float | torch.Tensor,
    chunk_size: int = 128,
    trained_index: torch.Tensor | None = None,
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
        trained_index: ``[n]`` flat positions (into ``labels.reshape(-1)``) of the trained labels, in
            order, on ``hidden``'s device; computed from ``labels`` when None (a ``nonzero``: on an
            accelerator it waits for the device, so the training step passes it from the CPU batch).
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
    index = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1) if trained_index is None else trained_index
    trained = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # [n, d]
    targets = flat_labels.index_select(0, index)  # [n]
    if not return_logprobs and hidden.dtype != torch.float16 and torch.is_grad_enabled():
        casts = _CastOnce()
        with casts:  # the probe's cast is the one every chunk reuses
            leaves = _projection_leaves(output_projection, trained)
        if trained.requires_grad or leaves:
            total = _GradInForwardCE.apply(output_projection, chunk_size, casts, trained, targets, *leaves)
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


def prepare_batch(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Move a collated CPU batch to ``device``, with what the step must know about it found on the CPU.

    Anything that asks the values of a device tensor (``nonzero``, ``bool(...)``) waits for the device to
    finish the work queued so far; asked on the CPU batch it costs nothing. So before the move:
    ``trained_index``, the flat positions of the trained labels (:func:`linear_cross_entropy`), and
    whether every row is one document without padding, in which case ``document_ids`` becomes None (the
    model's plain causal path, which it would otherwise have to find out from device values), and
    otherwise the documents' layout (``segments``, :class:`ft_models.DocumentSegments`), which the model
    would otherwise compute from a host copy of the device ids.

    Args:
        batch: ``input_ids``, ``labels``, ``position_ids``, ``document_ids`` ``[b, s]`` on the CPU.
        device: Where the step computes.

    Returns:
        The batch on ``device`` plus ``trained_index`` ``[n]`` and ``segments``; ``document_ids`` and
        ``segments`` are None for single-document rows.
    """
    documents = batch["document_ids"]
    one_document = documents.shape[1] == 0 or bool(((documents == documents[:, :1]) & (documents >= 0)).all())
    index = (batch["labels"].reshape(-1) != IGNORE_INDEX).nonzero().squeeze(1)  # [n]
    segments = None if one_document else ft_models.DocumentSegments.from_document_ids(documents, device)
    moved: dict[str, torch.Tensor | None] = {
        k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "document_ids"
    }
    moved["document_ids"] = None if one_document else documents.to(device, non_blocking=True)
    moved["trained_index"] = index.to(device, non_blocking=True)
    return {**moved, "segments": segments}


def batch_loss(
    model: ft_models.CausalLM,
    batch: Mapping[str, Any],
    *,
    normalizer: int | float | torch.Tensor,
) -> torch.Tensor:
    """The forward of one collated batch and its :func:`linear_cross_entropy` (training and validation).

    Args:
        model: The model.
        batch: ``input_ids``, ``labels``, ``position_ids`` and ``document_ids``, each ``[b, s]``, on the
            model's device (what ``ft_data``'s collator makes), or what :func:`prepare_batch` makes of
            them (``document_ids`` None for single-document rows, and ``trained_index``).
        normalizer: As for :func:`linear_cross_entropy`.

    Returns:
        The scalar fp32 loss.
    """
    labels = batch["labels"]
    assert labels is not None
    hidden = model(
        batch["input_ids"],
        position_ids=batch["position_ids"],
        document_ids=batch.get("document_ids"),
        segments=batch.get("segments"),
        return_hidden=True,
    )  # [b, s, d]
    return linear_cross_entropy(
        hidden,
        model.output_projection,
        labels,
        normalizer=normalizer,
        trained_index=batch.get("trained_index"),
    )
