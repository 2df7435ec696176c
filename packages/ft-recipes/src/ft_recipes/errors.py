"""Typed exceptions of ft-recipes.

Two families, so a command line can map them without knowing each class: a :class:`UserError` is bad
input (a config, an override, a path: exit status 2) and an :class:`ExpectedFailure` is a failure the
user did not cause and can retry (network, gated repository, disk: exit status 1). Messages are one
line naming the file, the dotted key or the module, and the offending value.
"""

from __future__ import annotations

__all__ = [
    "CheckpointLoadError",
    "CheckpointSaveError",
    "ComponentError",
    "ConfigError",
    "ConfigSyntaxError",
    "DownloadError",
    "ExpectedFailure",
    "FtRecipesError",
    "MissingExtraError",
    "MissingFileError",
    "OverrideError",
    "RecipeNotFoundError",
    "UserError",
]


class FtRecipesError(Exception):
    """Base class of every ft-recipes error."""

    exit_code = 1


class UserError(FtRecipesError):
    """Bad input from the user (exit status 2)."""

    exit_code = 2


class ExpectedFailure(FtRecipesError):
    """A failure outside the user's input: network, permissions, disk (exit status 1)."""

    exit_code = 1


class ConfigSyntaxError(UserError):
    """A config file that is not valid YAML (the message carries line and column)."""


class ConfigError(UserError):
    """A config that parses but breaks its recipe's schema: unknown or missing key, wrong type."""


class OverrideError(UserError):
    """A command-line override that is not ``key=value`` or ``~key``, or names no key."""


class ComponentError(UserError):
    """A ``_component_`` that cannot be imported, is not allowed, or does not take a keyword."""


class RecipeNotFoundError(UserError):
    """An unknown recipe or config name (the message suggests close names)."""


class MissingFileError(UserError):
    """A file the config names (checkpoint, tokenizer, adapter) does not exist."""


class DownloadError(ExpectedFailure):
    """A download failed for a reason outside the user's input (network, gated repository, disk)."""


class MissingExtraError(ExpectedFailure):
    """A feature whose optional library is not installed (the message names the ``ft-recipes[extra]``)."""


class CheckpointLoadError(UserError):
    """A checkpoint to resume from is incomplete, truncated or does not fit the run (a file is named)."""


class CheckpointSaveError(ExpectedFailure):
    """Writing a checkpoint failed (disk full, permissions); the previous complete checkpoint is kept."""
