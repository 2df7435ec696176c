"""Typed exceptions of ft-dist.

Messages are one line naming the checkpoint directory or file, the option or the rank and the offending
value, so a command line can print them as they are.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DistributedError",
    "FtDistError",
    "RankFailedError",
    "ShardingError",
    "UnsafeCheckpointError",
]


class FtDistError(Exception):
    """Base class of every ft-dist error."""


class CheckpointError(FtDistError):
    """A checkpoint is missing, incomplete or does not fit the state it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asks to construct an object outside the allowed set (possible code execution)."""


class ShardingError(FtDistError):
    """A sharding request that cannot work: mesh sizes that do not multiply to the world size, CPU
    offload without CUDA, a model without the expected structure."""


class DistributedError(FtDistError):
    """The launch environment or a process-group option is unusable (a malformed ``WORLD_SIZE``, a
    non-positive timeout)."""


class RankFailedError(DistributedError):
    """One rank of a distributed run failed; raised on every rank, naming the rank that failed first.

    Attributes:
        rank: the rank whose failure was recorded first (this rank when nothing else was recorded).
    """

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank
