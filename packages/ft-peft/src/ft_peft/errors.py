"""Typed exceptions of ft-peft.

Every message is one line that names the module (or file, or key) and the offending value, so a
caller (the `tune` CLI, a user's script) can show it without a traceback.
"""

from __future__ import annotations

__all__ = [
    "AdapterFormatError",
    "AdapterShapeError",
    "FtPeftError",
    "InvalidRankError",
    "MergedStateError",
    "MissingExtraError",
    "TargetNotFoundError",
    "UnsupportedQuantizationError",
]


class FtPeftError(Exception):
    """Base class of every error ft-peft raises on purpose."""


class TargetNotFoundError(FtPeftError, ValueError):
    """A `target_modules` entry matched no linear layer of the model."""


class InvalidRankError(FtPeftError, ValueError):
    """A LoRA rank is not a positive integer that fits the layer."""


class MissingExtraError(FtPeftError, ImportError):
    """An optional dependency (bitsandbytes for QLoRA) is not installed."""


class UnsupportedQuantizationError(FtPeftError, ValueError):
    """A quantisation kind, block size or compute dtype ft-peft does not support."""


class AdapterShapeError(FtPeftError, ValueError):
    """Adapter tensors whose shapes do not fit the layer they target."""


class AdapterFormatError(FtPeftError, ValueError):
    """An adapter directory or config that is not a LoRA adapter ft-peft can read."""


class MergedStateError(FtPeftError, RuntimeError):
    """An operation that needs an unmerged (or merged) adapter found the other state."""
