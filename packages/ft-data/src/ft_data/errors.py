"""Typed exceptions of ft-data.

Every message is one line that names the file (or key) and what is wrong or missing, so the
CLI can print it as is.
"""

from __future__ import annotations

__all__ = [
    "FtDataError",
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
