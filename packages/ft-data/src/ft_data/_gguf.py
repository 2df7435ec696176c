"""GGUF tokenizer metadata (llama.cpp's file format) -> ft tokenizer.

Only the key/value header is read, with the value-type codes of the ``gguf`` package (extra
``gguf``); tensors are never touched, so a multi-GB model file opens in milliseconds.
``tokenizer.ggml.model = gpt2`` is byte-level BPE whose split is named by ``tokenizer.ggml.pre``;
``llama`` is SentencePiece BPE (through the ``sentencepiece`` extra).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from ft_data._added import AddedToken
from ft_data._bpe import BytePairTokenizer
from ft_data._extras import require
from ft_data._pretokenize import from_llama_cpp_pre
from ft_data._protocol import Tokenizer
from ft_data._vocab import byte_level_tables
from ft_data.errors import TokenizerFileError, TokenizerMetadataError, UnsupportedTokenizerError

__all__ = ["load_gguf", "read_gguf_metadata"]

GGUF_MAGIC = b"GGUF"
_CONTROL, _USER_DEFINED = 3, 4
_U64 = struct.Struct("<Q")
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_gguf_metadata(path: Path, prefix: str = "") -> dict[str, Any]:
    """Key/value metadata of a GGUF file (keys starting with `prefix`; others are skipped cheaply).

    Raises:
        TokenizerFileError: unreadable, not GGUF, or truncated inside the header.
    """
    gguf = require("gguf", "gguf", f"reading {path}")
    vt = gguf.GGUFValueType
    string_t, array_t = int(vt.STRING), int(vt.ARRAY)
    try:
        with path.open("rb") as fh:
            try:
                buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # empty file
                buf = b""  # type: ignore[assignment]
    except OSError as exc:
        raise TokenizerFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if buf[:4] != GGUF_MAGIC:
        raise TokenizerFileError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    try:
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2 or version > 3:
            raise TokenizerFileError(f"{path}: unsupported GGUF version {version}")
        pos = 24
        out: dict[str, Any] = {}

        def read_str(p: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, p)
            end = p + 8 + n
            if end > len(buf):
                raise struct.error("string past end of file")
            return bytes(buf[p + 8 : end]).decode("utf-8", errors="replace"), end

        def read_value(t: int, p: int, keep: bool) -> tuple[Any, int]:
            if t == string_t:
                return read_str(p)
            if t in _SCALARS:
                fmt = _SCALARS[t]
                return struct.unpack_from(fmt, buf, p)[0], p + struct.calcsize(fmt)
            if t == array_t:
                et, count = struct.unpack_from("<IQ", buf, p)
                p += 12
                if et in _SCALARS:
                    size = struct.calcsize(_SCALARS[et])
                    if p + size * count > len(buf):
                        raise struct.error("array past end of file")
                    vals = list(struct.unpack_from(f"<{count}{_SCALARS[et][1]}", buf, p)) if keep else None
                    return vals, p + size * count
                items: list[Any] = []
                if et == string_t:  # the vocabulary: a tight loop, ~100 ns per token
                    u64 = _U64.unpack_from
                    for _ in range(count):
                        (n,) = u64(buf, p)
                        if keep:
                            items.append(buf[p + 8 : p + 8 + n].decode("utf-8", errors="replace"))
                        p += 8 + n
                    if p > len(buf):
                        raise struct.error("string array past end of file")
                    return items, p
                for _ in range(count):
                    v, p = read_value(et, p, keep)
                    items.append(v)
                return items, p
            raise TokenizerFileError(f"{path}: unknown GGUF value type {t}")

        for _ in range(n_kv):
            key, pos = read_str(pos)
            (t,) = struct.unpack_from("<I", buf, pos)
            keep = key.startswith(prefix)
            value, pos = read_value(t, pos + 4, keep)
            if keep:
                out[key] = value
        return out
    except struct.error as exc:
        raise TokenizerFileError(f"{path}: truncated GGUF header ({exc})") from exc
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _need(meta: dict[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise TokenizerMetadataError(f"{path}: GGUF has no tokenizer metadata key {key!r}")
    return meta[key]


def load_gguf(path: Path, fuse: bool = True) -> Tokenizer:
    """Build the tokenizer stored in a GGUF file's ``tokenizer.*`` metadata."""
    meta = read_gguf_metadata(path, prefix="tokenizer.")
    model = _need(meta, "tokenizer.ggml.model", path)
    if model == "gpt2":
        return _gpt2(path, meta, fuse)
    if model == "llama":
        from ft_data._spm import spm_from_gguf

        return spm_from_gguf(path, meta)
    raise UnsupportedTokenizerError(
        f"{path}: unsupported tokenizer.ggml.model {model!r} (supported: gpt2, llama)"
    )


def _gpt2(path: Path, meta: dict[str, Any], fuse: bool) -> BytePairTokenizer:
    pre, ignore_merges = from_llama_cpp_pre(meta.get("tokenizer.ggml.pre"), str(path))
    tokens: list[str] = _need(meta, "tokenizer.ggml.tokens", path)
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [_pair(m) for m in _need(meta, "tokenizer.ggml.merges", path)]
    added = [
        AddedToken(content=tok, id=i, special=ty == _CONTROL)
        for i, (tok, ty) in enumerate(zip(tokens, types))
        if ty in (_CONTROL, _USER_DEFINED)
    ]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tables = byte_level_tables(
        vocab, merges, {t.id: t.content for t in added}, str(path), ignore_merges=ignore_merges
    )
    tpl = meta.get("tokenizer.chat_template")
    return BytePairTokenizer(
        name=path.name,
        ranks=tables.ranks,
        id_of_rank=tables.id_of_rank,
        id_to_bytes=tables.id_to_bytes,
        pre=pre,
        added=added,
        bos_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_id=meta.get("tokenizer.ggml.padding_token_id"),
        chat_template=tpl if isinstance(tpl, str) else None,
        add_bos_default=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_default=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        merges=tables.merges,
        ignore_merges=ignore_merges,
        drop_from=tables.drop_from,
        fuse=fuse,
        vocab_texts=tables.texts,
    )


def _pair(merge: str) -> tuple[str, str]:
    first, _, second = merge.partition(" ")
    return first, second
