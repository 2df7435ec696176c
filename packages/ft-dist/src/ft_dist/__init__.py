"""ft-dist: FSDP2 sharding, activation checkpointing and sharded (DCP) checkpoints for ft."""

__version__ = "0.1.0"

__all__ = ["__version__"]
