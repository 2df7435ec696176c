"""Capabilities other packages rely on, as structural types (no base class carries implementation)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["AdapterModule"]


@runtime_checkable
class AdapterModule(Protocol):
    """A layer with trainable adapter tensors beside frozen base weights (`LoRALinear` is one).

    Recipes use it to find what to train, to save, and what to fold into the base for export.
    """

    adapter_enabled: bool
    merged: bool

    def adapter_parameters(self) -> list[torch.Tensor]:
        """The tensors an optimizer should update."""
        ...

    def merge(self) -> None:
        """Fold the adapter into the base weight in place."""
        ...

    def unmerge(self) -> None:
        """Undo `merge`."""
        ...
