"""Writing Hugging Face tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``) that ``transformers.AutoTokenizer`` loads with identical ids.

This is how a model imported from GGUF or a tiktoken file gets a loadable output directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_data._atomic import write_atomic
from ft_data._bytes import bytes_to_token
from ft_data._pretokenize import GPT2
from ft_data._vocab import merges_from_ranks
from ft_data.errors import UnsupportedTokenizerError

if TYPE_CHECKING:
    from ft_data._bpe import BytePairTokenizer

__all__ = ["save_byte_level", "write_files"]


def write_files(path: Path, files: dict[str, Any]) -> Path:
    """Write JSON files into `path`, each atomically (`write_atomic`: temp file, fsync, rename)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = json.dumps(content, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
        write_atomic(path / name, text.encode("utf-8"))
    return path


def _post_processor(tok: BytePairTokenizer) -> dict[str, Any] | None:
    parts: list[tuple[str, int]] = []
    if tok.add_bos_default and tok.bos_id is not None:
        parts.append(("bos", tok.bos_id))
    parts.append(("$", -1))
    if tok.add_eos_default and tok.eos_id is not None:
        parts.append(("eos", tok.eos_id))
    if len(parts) == 1:
        return None
    text = {i: tok.id_to_bytes[i].decode("utf-8", "replace") for _, i in parts if i >= 0}

    def seq(type_id: int, seq_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for kind, i in parts:
            if kind == "$":
                out.append({"Sequence": {"id": seq_id, "type_id": type_id}})
            else:
                out.append({"SpecialToken": {"id": text[i], "type_id": type_id}})
        return out

    return {
        "type": "TemplateProcessing",
        "single": seq(0, "A"),
        "pair": seq(0, "A") + seq(1, "B"),
        "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for i, t in text.items()},
    }


def _pre_tokenizer(tok: BytePairTokenizer) -> dict[str, Any]:
    if not tok.pre.add_prefix_space:
        return tok.pre.to_hf_json()
    if tok.pre.stages == (GPT2,):
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    raise UnsupportedTokenizerError(f"{tok.name}: cannot save add_prefix_space with custom split regexes")


def save_byte_level(tok: BytePairTokenizer, path: Path) -> Path:
    """Write the three Hugging Face files for a byte-level BPE tokenizer into `path`."""
    if tok.merges is None:
        merges, ignore_merges = merges_from_ranks(tok.ranks), True
    else:
        merges, ignore_merges = list(tok.merges), tok.ignore_merges
    vocab = {bytes_to_token(b): i for i, b in enumerate(tok.id_to_bytes) if b}
    for t in tok.added:
        vocab[t.content] = t.id
    model = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": ignore_merges,
        "vocab": vocab,
        "merges": [[bytes_to_token(a), bytes_to_token(b)] for a, b in merges],
    }
    added = [
        {
            "id": t.id,
            "content": t.content,
            "single_word": t.single_word,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "special": t.special,
        }
        for t in sorted(tok.added, key=lambda t: t.id)
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": tok.normalizer.to_hf_json(),
        "pre_tokenizer": _pre_tokenizer(tok),
        "post_processor": _post_processor(tok),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": model,
    }
    return write_files(path, {"tokenizer.json": tokenizer_json, **hf_config_files(tok)})


def hf_config_files(tok: Any) -> dict[str, Any]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` for any ft tokenizer."""

    def text(i: int | None) -> str | None:
        return None if i is None else tok.decode([i])

    named = {"bos_token": text(tok.bos_id), "eos_token": text(tok.eos_id), "pad_token": text(tok.pad_id)}
    named = {k: v for k, v in named.items() if v is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(getattr(tok, "add_bos_default", False)),
        "add_eos_token": bool(getattr(tok, "add_eos_default", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        **named,
    }
    if tok.chat_template is not None:
        config["chat_template"] = tok.chat_template
    return {"tokenizer_config.json": config, "special_tokens_map.json": named}
