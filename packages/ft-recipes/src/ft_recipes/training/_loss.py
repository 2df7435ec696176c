"""Chunked linear cross-entropy: output projection fused with the loss, never ``[b, s, v]`` fp32 logits.

The output projection (``lm_head`` plus any family soft-cap, through ``output_projection``) and the
cross-entropy run on chunks of trained positions only. Each chunk goes through non-reentrant
``torch.utils.checkpoint``, so neither the forward nor the backward holds more than one chunk's
``[chunk, v]`` logits: the backward recomputes a chunk's logits, takes its gradient, and frees them
before the next (the same memory bound as the "cut cross-entropy" / Liger fused losses, with plain
PyTorch ops). Logits are upcast to fp32 before log-softmax whatever the compute dtype.

The loss is a sum over trained tokens divided by ``normalizer``, the trained-token count of the whole
accumulation window (all-reduced across ranks when distributed): summing per-micro-batch losses that
were each divided by the same window total gives exactly the full-batch mean, while averaging
per-micro-batch means weights a short micro-batch's tokens more (the well-known accumulation bug).

Legend: b batch, s sequence, d hidden size, v vocabulary, n trained positions, c chunk length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ft_recipes.training.errors import LossError

__all__ = ["IGNORE_INDEX", "linear_cross_entropy"]

IGNORE_INDEX = -100


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
    chunk_size: int = 512,
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
