"""Data sources: rows (dicts) from local JSONL / JSON / CSV / Parquet files or Hugging Face datasets.

Each source also yields a fingerprint of its bytes (sha256 of the file, or the `datasets` library's
own fingerprint of a Hub or local dataset), which keys the tokenisation cache. Rows are numbered
from 1 in error messages (the data line of a JSONL or CSV file, the element of a JSON list).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_data._extras import require
from ft_data.errors import DataFileError, DataRowError

__all__ = ["RowSource", "read_rows"]

_LOCAL = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class RowSource:
    """Rows read from one source.

    Attributes:
        name: The file path or dataset name (used in every error message).
        rows: The rows, in file order.
        fingerprint: Hash of the data's bytes (cache key).
    """

    name: str
    rows: list[dict[str, Any]]
    fingerprint: str


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _jsonl(path: Path, data: bytes) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataRowError(f"{path}: row {n}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise DataRowError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _json(path: Path, data: bytes) -> list[dict[str, Any]]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(value, list):
        raise DataFileError(f"{path}: expected a JSON list of objects, got {type(value).__name__}")
    for n, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataRowError(f"{path}: row {n}: expected a JSON object, got {type(row).__name__}")
    return value


def _csv(path: Path, data: bytes) -> list[dict[str, Any]]:
    text = data.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for n, row in enumerate(reader, start=1):
        if None in row:
            raise DataRowError(f"{path}: row {n}: more values than header columns")
        rows.append(dict(row))
    return rows


def _parquet(path: Path) -> list[dict[str, Any]]:
    pq = require("pyarrow.parquet", "parquet", str(path))
    try:
        return list(pq.read_table(path).to_pylist())
    except Exception as exc:  # pyarrow raises several unrelated types for broken files
        raise DataFileError(f"{path}: cannot read Parquet ({exc})") from exc


def _hf_dataset(name: str, split: str) -> RowSource:
    datasets = require("datasets", "datasets", name)
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the library raises many types (not found, no split, offline...)
        raise DataFileError(
            f"{name}: cannot load dataset split {split!r} ({type(exc).__name__}: {exc})"
        ) from exc
    return RowSource(name=f"{name}[{split}]", rows=list(ds), fingerprint=f"datasets:{ds._fingerprint}")


def read_rows(
    source: str | os.PathLike[str], *, split: str = "train", data_format: str | None = None
) -> RowSource:
    """Read every row of `source`.

    Args:
        source: A local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a dataset name or
            directory for the Hugging Face `datasets` library (extra ``datasets``).
        split: Split for `datasets` sources.
        data_format: Force ``jsonl``, ``json``, ``csv``, ``parquet`` or ``hf`` instead of the suffix.

    Raises:
        DataFileError: Unreadable, unknown format, or no rows.
        DataRowError: A row that is not an object (names file and row).
    """
    path = Path(source)
    fmt = data_format or _LOCAL.get(path.suffix.lower())
    if fmt is None and path.is_file():
        raise DataFileError(
            f"{path}: unknown data format {path.suffix!r} (expected {', '.join(sorted(_LOCAL))})"
        )
    if fmt is None or fmt == "hf":
        out = _hf_dataset(str(source), split)
    elif fmt in ("jsonl", "json", "csv", "parquet"):
        data = _read_bytes(path)
        try:
            rows = (
                {"jsonl": _jsonl, "json": _json, "csv": _csv}[fmt](path, data)
                if fmt != "parquet"
                else _parquet(path)
            )
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        out = RowSource(name=str(path), rows=rows, fingerprint=hashlib.sha256(data).hexdigest())
    else:
        raise DataFileError(
            f"{source}: unknown data_format {fmt!r} (expected jsonl, json, csv, parquet or hf)"
        )
    if not out.rows:
        raise DataFileError(f"{out.name}: no rows")
    return out
