"""`load_tokenizer`: one entry point that recognises a tokenizer file by its content.

Llama 3's ``tokenizer.model`` is tiktoken text while Mistral's is a SentencePiece protobuf, so
names are never trusted: GGUF by its magic, JSON by its keys (``model`` for Hugging Face,
``config`` + ``vocab`` for Tekken), tiktoken by its ``base64 rank`` lines, SentencePiece by its
protobuf framing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ft_data._protocol import Tokenizer
from ft_data.errors import TokenizerFileError

__all__ = ["load_tokenizer"]

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?\n")
_DIR_CANDIDATES = (
    "tokenizer.json",
    "tekken.json",
    "tokenizer.model",
    "tokenizer.model.v3",
    "tokenizer.model.v1",
)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a model directory or a single file.

    Args:
        path: A directory (``tokenizer.json``, ``tekken.json`` or ``tokenizer.model`` inside, else
            the only ``*.gguf``), a Hugging Face ``tokenizer.json``, a tiktoken model file (Llama 3,
            Llama 4), a SentencePiece ``.model``, a Tekken JSON or a GGUF file.

    Raises:
        TokenizerFileError: missing, unreadable, truncated or unrecognised file.
        TokenizerMetadataError: a readable file without the tokenizer keys.
        UnsupportedTokenizerError: a model or pre-tokenizer type ft does not implement.
        MissingExtraError: the format needs an optional dependency that is not installed.
    """
    p = Path(path)
    if p.is_dir():
        p = _pick_in_dir(p)
    try:
        with p.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise TokenizerFileError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if not head:
        raise TokenizerFileError(f"{p}: empty file, not a tokenizer")
    if head[:4] == b"GGUF":
        from ft_data._gguf import load_gguf

        return load_gguf(p)
    if head.lstrip()[:1] == b"{":
        return _load_json(p)
    if _TIKTOKEN_LINE.match(head):
        from ft_data._tiktoken_file import load_tiktoken_file

        return load_tiktoken_file(p)
    if head[:1] == b"\x0a":  # protobuf field 1 (pieces), length-delimited: SentencePiece ModelProto
        from ft_data._spm import load_spm

        return load_spm(p)
    raise TokenizerFileError(
        f"{p}: unknown tokenizer format (not GGUF, tokenizer.json, Tekken, tiktoken or SentencePiece)"
    )


def _pick_in_dir(d: Path) -> Path:
    for name in _DIR_CANDIDATES:
        if (d / name).is_file():
            return d / name
    ggufs = sorted(d.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise TokenizerFileError(
        f"{d}: no tokenizer file found (looked for {', '.join(_DIR_CANDIDATES)}, *.gguf)"
    )


def _load_json(p: Path) -> Tokenizer:
    from ft_data._hf import load_hf_json, read_json

    data = read_json(p)
    if isinstance(data, dict) and "model" in data:
        return load_hf_json(p)
    if isinstance(data, dict) and "config" in data and "vocab" in data:
        from ft_data._tekken import load_tekken

        return load_tekken(p, data)
    raise TokenizerFileError(f"{p}: JSON is neither a Hugging Face tokenizer.json nor a Tekken file")
