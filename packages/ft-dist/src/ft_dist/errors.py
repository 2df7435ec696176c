"""Typed exceptions of ft-dist.

Messages are one line naming the checkpoint directory or file and the offending value, so a command
line can print them as they are.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "FtDistError", "UnsafeCheckpointError"]


class FtDistError(Exception):
    """Base class of every ft-dist error."""


class CheckpointError(FtDistError):
    """A checkpoint is missing, incomplete or does not fit the state it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asks to construct an object outside the allowed set (possible code execution)."""
