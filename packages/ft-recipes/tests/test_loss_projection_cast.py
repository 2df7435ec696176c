"""The chunked loss casts the output projection's master weight once per call, not once per chunk.

Under ``bf16-mixed`` the ``lm_head`` weight (or the tied embedding) is an fp32 master that the unit's
forward casts to bf16 on every call; the loss calls the projection once per chunk. Counted at the
dispatcher (``aten._to_copy`` of a ``[v, d]`` tensor, forward and backward), against the previous
algorithm (gradient in the forward, taken per chunk through that chunk's cast), which casts in every
chunk, forward and backward, and gives bit-identical loss and gradients; and against the loss written
the obvious way with ``F.cross_entropy`` (numerics within bf16 rounding).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_training_support import LLAMA, batch, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from ft_recipes.training import apply_precision, linear_cross_entropy, resolve_precision
from ft_recipes.training._loss import _cross_entropy_and_grad

CHUNK = 4


class CastCounter(TorchDispatchMode):
    """Counts dtype copies of tensors with the output projection's shape."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape, self.count = shape, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._to_copy.default and args[0].shape == self.shape:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _setup(tied: bool) -> tuple[Any, torch.Tensor, torch.Tensor]:
    model = tiny_model({**LLAMA, "tie_word_embeddings": tied})
    apply_precision(model, resolve_precision("bf16-mixed", "cpu"))
    ids, labels = batch(LLAMA["vocab_size"], 3, 11, [9, 4, 11])
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)  # [3, 11, d] bf16
    return model, hidden, labels


def _naive(model: Any, hidden: torch.Tensor, labels: torch.Tensor, normalizer: int) -> torch.Tensor:
    flat = labels.reshape(-1)
    keep = flat != -100
    trained, targets = hidden.reshape(-1, hidden.shape[-1])[keep], flat[keep]
    total = torch.zeros(())
    for h, t in zip(trained.split(CHUNK), targets.split(CHUNK), strict=True):
        total = total + F.cross_entropy(model.output_projection(h).float(), t, reduction="sum")
    return total / normalizer


def _per_chunk_cast(
    model: Any, hidden: torch.Tensor, labels: torch.Tensor, normalizer: int
) -> tuple[Any, ...]:
    """The previous algorithm: each chunk's gradients taken through that chunk's own cast of the master."""
    weight = model.lm_head.weight
    flat = labels.reshape(-1)
    keep = flat != -100
    trained, targets = hidden.reshape(-1, hidden.shape[-1])[keep], flat[keep]
    grad_hidden, grad_weight = torch.empty_like(trained), torch.zeros_like(weight)
    total = torch.zeros(())
    for start in range(0, trained.shape[0], CHUNK):
        h = trained[start : start + CHUNK].detach().requires_grad_(True)
        logits = model.output_projection(h)  # the unit's forward casts the master here, every chunk
        loss, grad_logits = _cross_entropy_and_grad(logits.detach(), targets[start : start + CHUNK])
        g_h, g_w = torch.autograd.grad(logits, [h, weight], grad_logits)
        grad_hidden[start : start + CHUNK] = g_h
        grad_weight += g_w
        total += loss
    upstream = torch.ones(()) / normalizer  # what the loss's division hands its backward
    return total / normalizer, grad_hidden * upstream, grad_weight * upstream


@pytest.mark.parametrize("tied", [False, True], ids=["lm_head", "tied"])
def test_one_cast_per_loss_call(tied: bool) -> None:
    model, hidden, labels = _setup(tied)
    weight = model.lm_head.weight
    assert weight.dtype == torch.float32
    assert weight.requires_grad
    normalizer = int((labels != -100).sum())
    chunks = -(-normalizer // CHUNK)
    assert chunks >= 5

    h = hidden.detach().requires_grad_(True)
    counter = CastCounter(weight.shape)
    with counter:
        loss = linear_cross_entropy(
            h, model.output_projection, labels, normalizer=normalizer, chunk_size=CHUNK
        )
        loss.backward()
    assert counter.count == 1, counter.count
    grads = (h.grad.clone(), weight.grad.clone())
    model.zero_grad(set_to_none=True)

    # Wrong variant: the previous algorithm casts every chunk, in the forward and the backward; its
    # numbers are the same bit for bit.
    previous = CastCounter(weight.shape)
    with previous, torch.enable_grad():
        ref_loss, ref_grad_hidden, ref_grad_weight = _per_chunk_cast(model, hidden, labels, normalizer)
    assert previous.count == 2 * chunks, previous.count
    keep = (labels != -100).reshape(-1)
    torch.testing.assert_close(loss, ref_loss, atol=0, rtol=0)
    torch.testing.assert_close(
        grads[0].reshape(-1, grads[0].shape[-1])[keep], ref_grad_hidden, atol=0, rtol=0
    )
    torch.testing.assert_close(grads[1], ref_grad_weight, atol=0, rtol=0)

    # And the plain F.cross_entropy formulation (its own rounding of the bf16 logits' gradient).
    h_ref = hidden.detach().requires_grad_(True)
    reference = _naive(model, h_ref, labels, normalizer)
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads[0], h_ref.grad, atol=1e-2, rtol=1e-2)  # bf16 gradients
    torch.testing.assert_close(grads[1], weight.grad, atol=1e-4, rtol=2e-2)
