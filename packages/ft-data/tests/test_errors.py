"""Bad input: unreadable or truncated files, unknown model / pre-tokenizer / normalizer types,
GGUF without tokenizer metadata, a missing optional dependency. Each gives a typed one-line
error that names the file and what is missing or wrong."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import ft_data
from ft_data.errors import (
    FtDataError,
    MissingExtraError,
    TokenizerFileError,
    TokenizerMetadataError,
    UnsupportedTokenizerError,
)


def _raises(exc: type[FtDataError], path: Path, *words: str) -> None:
    with pytest.raises(exc) as err:
        ft_data.load_tokenizer(path)
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


def _write_gguf(path: Path, **kv: object) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        name = key.replace("__", ".")
        if isinstance(value, str):
            writer.add_string(name, value)
        else:
            writer.add_array(name, value)  # type: ignore[arg-type]
    writer.add_tensor("w", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_file_and_empty_dir(tmp_path: Path) -> None:
    _raises(TokenizerFileError, tmp_path / "nope.json", "cannot read")
    _raises(TokenizerFileError, tmp_path, "no tokenizer file found")
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01binary")
    _raises(TokenizerFileError, tmp_path / "junk.bin", "unknown tokenizer format")
    (tmp_path / "empty.model").write_bytes(b"")
    _raises(TokenizerFileError, tmp_path / "empty.model", "empty file")


def test_truncated_files(
    tmp_path: Path, smollm_gguf: Path, llama_models_dir: Path, mistral_data: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm_gguf.read_bytes()[:300_000])  # ends inside the vocabulary array
    _raises(TokenizerFileError, cut, "truncated GGUF header")
    tekken = (mistral_data / "tekken_240911.json").read_bytes()
    (tmp_path / "tekken.json").write_bytes(tekken[: len(tekken) // 2])
    _raises(TokenizerFileError, tmp_path / "tekken.json", "truncated or invalid JSON")
    ranks = (llama_models_dir / "llama3" / "tokenizer.model").read_bytes()
    (tmp_path / "tokenizer.model").write_bytes(ranks[: len(ranks) // 2 + 3])
    _raises(TokenizerFileError, tmp_path / "tokenizer.model", "line")
    spm = (mistral_data / "tokenizer.model.v1").read_bytes()
    (tmp_path / "spm.model").write_bytes(spm[: len(spm) // 2])
    _raises(TokenizerFileError, tmp_path / "spm.model", "not a valid SentencePiece model")


def _byte_level_json(tmp_path: Path, **overrides: object) -> Path:
    data = {
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "model": {"type": "BPE", "vocab": {}, "merges": []},
    }
    data.update(overrides)  # type: ignore[arg-type]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


def test_unknown_types_in_tokenizer_json(tmp_path: Path) -> None:
    path = _byte_level_json(tmp_path, model={"type": "Morfessor"})
    _raises(UnsupportedTokenizerError, path, "unknown tokenizer model type 'Morfessor'")
    pre = {"type": "Sequence", "pretokenizers": [{"type": "Punctuation"}, {"type": "ByteLevel"}]}
    _raises(UnsupportedTokenizerError, _byte_level_json(tmp_path, pre_tokenizer=pre), "'Punctuation'")
    _raises(UnsupportedTokenizerError, _byte_level_json(tmp_path, normalizer={"type": "Strip"}), "'Strip'")
    split = {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "MergedWithNext", "invert": False}
    pre = {"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel"}]}
    _raises(UnsupportedTokenizerError, _byte_level_json(tmp_path, pre_tokenizer=pre), "MergedWithNext")


def test_gguf_without_tokenizer_metadata(tmp_path: Path) -> None:
    path = _write_gguf(tmp_path / "bare.gguf")
    _raises(TokenizerMetadataError, path, "tokenizer.ggml.model")
    path = _write_gguf(tmp_path / "novocab.gguf", tokenizer__ggml__model="gpt2", tokenizer__ggml__pre="gpt-2")
    _raises(TokenizerMetadataError, path, "tokenizer.ggml.tokens")


def test_gguf_unknown_model_and_pre(tmp_path: Path) -> None:
    tokens = ["a", "b"]
    path = _write_gguf(
        tmp_path / "m.gguf", tokenizer__ggml__model="wordpiece9", tokenizer__ggml__tokens=tokens
    )
    _raises(UnsupportedTokenizerError, path, "'wordpiece9'")
    path = _write_gguf(
        tmp_path / "p.gguf", tokenizer__ggml__model="gpt2", tokenizer__ggml__pre="my-own-split"
    )
    _raises(UnsupportedTokenizerError, path, "unknown tokenizer.ggml.pre 'my-own-split'")


def test_missing_extra_is_named(tmp_path: Path, mistral_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokenizer.model"
    shutil.copyfile(mistral_data / "tokenizer.model.v1", path)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # what an install without the extra sees
    _raises(MissingExtraError, path, "ft-data[sentencepiece]")
