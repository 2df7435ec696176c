"""Typed exceptions of ft-models.

Every error the package raises on purpose derives from :class:`FtModelsError`, so a caller (the CLI)
can map them to a one-line message and an exit code. Messages name the file, key or module and the
offending value.
"""

__all__ = ["CacheError", "CheckpointError", "ConfigError", "FtModelsError"]


class FtModelsError(Exception):
    """Base class of every error ft-models raises deliberately."""


class ConfigError(FtModelsError, ValueError):
    """A model configuration is invalid or unsupported (names the file and the key)."""


class CheckpointError(FtModelsError):
    """A checkpoint cannot be read or written (names the file and the keys)."""


class CacheError(FtModelsError, ValueError):
    """A KV cache does not fit the batch it is used with."""
