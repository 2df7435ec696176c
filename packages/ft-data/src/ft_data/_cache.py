"""On-disk tokenisation cache: content-addressed, self-checking, written atomically.

The key is a sha256 over everything that shapes the tokens: the data's bytes, the tokenizer's files
(as `save_pretrained` writes them, so two loads of one tokenizer agree and any vocabulary, merge,
special-token or template change differs), the chat template source, every transform setting and
the ft-data version. A cache file holds int32 token arrays with their offsets and a sha256 of that
payload; a file that is truncated, altered or of another format fails the check and is rebuilt.

File layout: ``FTDATA1\\n`` magic, 8-byte little-endian header length, JSON header (fields, counts,
payload digest, build report), payload (per field: int64 offsets then int32 values, little-endian).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import tempfile
import weakref
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_data._atomic import write_atomic
from ft_data._protocol import Tokenizer
from ft_data.errors import DataCacheError

__all__ = ["cache_key", "default_cache_dir", "read_cache", "tokenizer_fingerprint", "write_cache"]

MAGIC = b"FTDATA1\n"
_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def default_cache_dir() -> Path:
    """``$FT_DATA_CACHE``, else ``~/.cache/ft/data``."""
    root = os.environ.get("FT_DATA_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "ft" / "data"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """sha256 of the files `tokenizer.save_pretrained` writes (computed once per tokenizer object)."""
    try:
        return _FINGERPRINTS[tokenizer]
    except (KeyError, TypeError):
        pass
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="ft-data-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    value = digest.hexdigest()
    with contextlib.suppress(TypeError):  # not weak-referenceable: recompute next time
        _FINGERPRINTS[tokenizer] = value
    return value


def cache_key(
    *, data: str, tokenizer: str, template: str | None, settings: Mapping[str, Any], version: str
) -> str:
    """Hex sha256 of every input of tokenisation (`settings` must be JSON-serialisable)."""
    blob = json.dumps(
        {
            "data": data,
            "tokenizer": tokenizer,
            "template": template,
            "settings": settings,
            "version": version,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _as_le(values: array) -> bytes:
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def write_cache(path: Path, fields: Mapping[str, Sequence[Sequence[int]]], report: Mapping[str, Any]) -> None:
    """Write `fields` (name -> one int list per example) atomically (`write_atomic`)."""
    chunks, layout = [], {}
    for name, seqs in fields.items():
        offsets = array("q", [0])
        values = array("i")
        for seq in seqs:
            values.extend(seq)
            offsets.append(len(values))
        chunks += [_as_le(offsets), _as_le(values)]
        layout[name] = [len(offsets), len(values)]
    payload = b"".join(chunks)
    header = json.dumps(
        {"layout": layout, "sha256": hashlib.sha256(payload).hexdigest(), "report": dict(report)}
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, MAGIC + len(header).to_bytes(8, "little") + header + payload)


def _from_le(data: bytes, typecode: str) -> array:
    values = array(typecode)
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    return values


def read_cache(path: Path) -> tuple[dict[str, list[list[int]]], dict[str, Any]]:
    """(fields, build report) of a cache file.

    Raises:
        DataCacheError: Wrong magic, unreadable header, wrong size or a payload digest mismatch.
    """
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise DataCacheError(f"{path}: not an ft-data cache file (bad magic)")
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8 + size
    try:
        header = json.loads(data[len(MAGIC) + 8 : start])
        layout = header["layout"]
        expected = sum(n * 8 + m * 4 for n, m in layout.values())
    except (ValueError, KeyError, TypeError) as exc:
        raise DataCacheError(f"{path}: unreadable cache header ({exc})") from exc
    payload = data[start:]
    if len(payload) != expected:
        raise DataCacheError(f"{path}: payload is {len(payload)} bytes, header says {expected}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise DataCacheError(f"{path}: payload digest mismatch")
    fields, pos = {}, 0
    for name, (n_off, n_val) in layout.items():
        offsets = _from_le(payload[pos : pos + 8 * n_off], "q")
        pos += 8 * n_off
        values = _from_le(payload[pos : pos + 4 * n_val], "i").tolist()
        pos += 4 * n_val
        fields[name] = [values[a:b] for a, b in itertools.pairwise(offsets)]
    return fields, dict(header.get("report", {}))
