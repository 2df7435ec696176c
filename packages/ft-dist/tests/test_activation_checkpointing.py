"""Activation checkpointing: same gradients (dropout on), same state-dict keys, fewer saved tensors."""

from __future__ import annotations

import functools

import torch
from dist_support import Tiny, loss_of
from torch.utils.checkpoint import checkpoint

import ft_dist


def _grads(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)  # dropout masks
    model.zero_grad()
    loss_of(model, ids).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _saved_count(model: torch.nn.Module, ids: torch.Tensor) -> int:
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, ids)
    loss.backward()
    return count


def test_gradients_and_keys_unchanged() -> None:
    torch.manual_seed(0)
    ref = Tiny()
    ids = torch.randint(0, 37, (3, 11))
    expected = _grads(ref, ids)
    keys = list(ref.state_dict())
    saved_plain = _saved_count(ref, ids)

    assert ft_dist.apply_activation_checkpointing(ref) == 3
    assert ft_dist.apply_activation_checkpointing(ref) == 0  # idempotent
    assert list(ref.state_dict()) == keys
    got = _grads(ref, ids)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)
    # Only the layer inputs are kept (plus the embedding and head); the blocks' internals are not.
    assert _saved_count(ref, ids) < saved_plain / 2


def test_wrong_variant_without_rng_preservation_differs() -> None:
    # A recomputation that does not restore the RNG draws new dropout masks: gradients change.
    torch.manual_seed(0)
    model = Tiny()
    ids = torch.randint(0, 37, (3, 11))
    expected = _grads(model, ids)
    for layer in model.layers:
        inner = type(layer).forward.__get__(layer, type(layer))
        layer.forward = functools.partial(checkpoint, inner, use_reentrant=False, preserve_rng_state=False)
    got = _grads(model, ids)
    assert not torch.allclose(got["layers.0.up.weight"], expected["layers.0.up.weight"], rtol=0, atol=1e-6)


def test_explicit_layer_selection_and_inference() -> None:
    model = Tiny()
    assert ft_dist.apply_activation_checkpointing(model, layers=[model.layers[1]]) == 1
    assert ft_dist.apply_activation_checkpointing(model, layers=lambda m: list(m.layers)) == 2
    with torch.no_grad():
        out = model(torch.randint(0, 37, (2, 5)))
    assert out.shape == (2, 5, 37)
