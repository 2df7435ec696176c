"""Lazy imports of optional dependencies, failing with the name of the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ft_data.errors import MissingExtraError


def require(module: str, extra: str, why: str) -> ModuleType:
    """Import `module` or raise `MissingExtraError` naming `pip install 'ft-data[extra]'`.

    Args:
        module: Importable module name (e.g. ``"sentencepiece"``).
        extra: The ft-data extra that provides it.
        why: What needs it, for the message (e.g. the file being loaded).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{why} needs the optional module {module!r}: pip install 'ft-data[{extra}]'"
        ) from exc
