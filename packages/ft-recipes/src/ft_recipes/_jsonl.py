"""Reading a user's JSONL file of objects, with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl_objects"]


def read_jsonl_objects(path: str | Path, where: str) -> list[tuple[int, dict[str, Any]]]:
    """The non-blank lines of ``path`` as ``(line number, object)`` pairs.

    Args:
        path: The JSONL file.
        where: What every error message starts with (the config key and the file as the user wrote it).

    Raises:
        MissingFileError: The file does not exist or cannot be read as UTF-8 text.
        UserError: A line that is not JSON or not a JSON object.
    """
    from ft_recipes.errors import MissingFileError, UserError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{where}: file not found") from None
    except UnicodeDecodeError:
        raise MissingFileError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise MissingFileError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    return rows
