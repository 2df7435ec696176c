"""Typed exceptions of ft-data.

Every message is one line that names the file (or key) and what is wrong or missing, so the
CLI can print it as is.
"""

from __future__ import annotations

__all__ = [
    "ChatTemplateError",
    "DataCacheError",
    "DataFileError",
    "DataRowError",
    "FtDataError",
    "MessageError",
    "MissingExtraError",
    "TokenizerFileError",
    "TokenizerMetadataError",
    "UnsupportedTokenizerError",
]


class FtDataError(Exception):
    """Base class of every error raised by ft-data."""


class MissingExtraError(FtDataError, ImportError):
    """An optional dependency is needed; the message names the extra that installs it."""


class TokenizerFileError(FtDataError):
    """A tokenizer file cannot be read: missing, unreadable, truncated or of an unknown format."""


class TokenizerMetadataError(FtDataError):
    """A tokenizer file is readable but lacks a key the tokenizer needs (e.g. GGUF without a vocabulary)."""


class UnsupportedTokenizerError(FtDataError):
    """A tokenizer model, pre-tokenizer or normalizer that ft does not implement (never a silent default)."""


class MessageError(FtDataError, ValueError):
    """A conversation that cannot be a training example: unknown role, broken role order, wrong type."""


class ChatTemplateError(FtDataError):
    """A chat template that cannot be loaded or rendered, or whose output cannot be mapped to messages."""


class DataFileError(FtDataError):
    """A data file (or dataset) that cannot be read, has an unknown format or holds no rows."""


class DataRowError(FtDataError):
    """One row of a data file is unusable; the message names the file, the row and the field."""


class DataCacheError(FtDataError):
    """A tokenisation cache file that fails its integrity checks (it is rebuilt, never trusted)."""
