"""Activation checkpointing (gradient checkpointing, Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost") applied to a model from outside.

Each selected layer's ``forward`` is replaced, on the instance, by a call through non-reentrant
``torch.utils.checkpoint.checkpoint``: the layer's activations are dropped after the forward and
recomputed during the backward. Anything that wrapped the layer's forward before (a cast of its
weights to the compute dtype) runs inside the checkpointed region and is recomputed too. No wrapper module is inserted, so module paths and state-dict keys
are unchanged (``model.layers.0.self_attn.q_proj.weight`` stays what it was), and the model code
knows nothing about it. The RNG state is preserved across the recomputation (dropout masks match),
so gradients are identical to a run without checkpointing.

Under ``torch.compile`` the checkpointed region becomes one higher-order op in the compiled graph, and
dynamo refuses the whole block (it then runs eagerly) if the region writes into anything created outside
it: a cache filled on an object passed in, a module's ``_parameters`` reassigned. Whatever runs inside
a checkpointed layer has to be free of such writes (ft-models builds its masks before the layers run;
ft-recipes' precision cast swaps weights through a context dynamo knows to be temporary).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["apply_activation_checkpointing", "decoder_layers"]

_MARK = "_ft_checkpointed_forward"


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The children of every ``nn.ModuleList`` attribute named ``layers`` (a decoder's blocks).

    ft-dist does not import any model package; this matches ft-models' and transformers' layout
    (``model.layers.{i}``) by name.
    """
    found: list[nn.Module] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
            found.extend(module)
    return found


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # inference: nothing to save, nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


def apply_activation_checkpointing(
    model: nn.Module,
    *,
    layers: Iterable[nn.Module] | Callable[[nn.Module], Iterable[nn.Module]] | None = None,
) -> int:
    """Checkpoint the activations of each selected layer, in place.

    Args:
        model: any module; only its selected layers change, and only their bound ``forward``.
        layers: the modules to checkpoint, or a function selecting them from ``model``; by default
            :func:`decoder_layers` (every ``model.layers.{i}``).

    Returns:
        The number of layers newly wrapped (a layer already wrapped is left alone, so applying twice
        is harmless).
    """
    selected = decoder_layers(model) if layers is None else layers(model) if callable(layers) else layers
    count = 0
    for layer in selected:
        if getattr(layer, _MARK, False):
            continue
        # Wrap the current forward: an instance-level wrapper applied earlier (a precision cast of the
        # layer's weights) then runs inside the checkpoint and is recomputed with it.
        inner = layer.forward
        layer.forward = functools.partial(_checkpointed, inner)  # type: ignore[method-assign]
        object.__setattr__(layer, _MARK, True)
        count += 1
    return count
