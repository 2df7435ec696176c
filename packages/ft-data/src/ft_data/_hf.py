"""Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``) -> ft tokenizer.

Byte-level BPE (a ``ByteLevel`` step in the pre-tokenizer) runs natively on tiktoken; any other
model (SentencePiece-style BPE with byte fallback, Unigram, WordPiece) is served by the
``tokenizers`` library through the ``tokenizers`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_data import _normalize, _pretokenize
from ft_data._added import AddedToken
from ft_data._bpe import BytePairTokenizer
from ft_data._protocol import Tokenizer
from ft_data._vocab import byte_level_tables
from ft_data.errors import TokenizerFileError, UnsupportedTokenizerError

__all__ = ["load_hf_json", "read_json"]


def read_json(path: Path) -> Any:
    """Read a JSON file; unreadable or truncated files raise `TokenizerFileError` naming the file."""
    try:
        with path.open("rb") as fh:
            return json.loads(fh.read())
    except OSError as exc:
        raise TokenizerFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerFileError(f"{path}: truncated or invalid JSON ({exc})") from exc


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("content"))
    return None if value is None else str(value)


def _is_byte_level(data: dict[str, Any]) -> bool:
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(s.get("type") == "ByteLevel" for s in steps)


def load_hf_json(path: Path, fuse: bool = True) -> Tokenizer:
    """Load ``tokenizer.json`` at `path`, reading ``tokenizer_config.json`` beside it if present.

    Args:
        path: The ``tokenizer.json`` file.
        fuse: Use fused split regexes (disable only to test the unfused pipeline).
    """
    data = read_json(path)
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerFileError(f"{path}: not a tokenizer.json (no 'model' key)")
    cfg_path = path.with_name("tokenizer_config.json")
    config: dict[str, Any] = read_json(cfg_path) if cfg_path.is_file() else {}
    jinja = path.with_name("chat_template.jinja")  # where transformers >= 4.50 writes the template
    if "chat_template" not in config and jinja.is_file():
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    model = data["model"]
    kind = model.get("type")
    if kind == "BPE" and _is_byte_level(data):
        return _byte_level(path, data, config, fuse)
    if kind in ("BPE", "Unigram", "WordPiece", "WordLevel"):
        from ft_data._hf_lib import HFLibraryTokenizer

        return HFLibraryTokenizer.from_file(path, config)
    raise UnsupportedTokenizerError(f"{path}: unknown tokenizer model type {kind!r}")


def _byte_level(path: Path, data: dict[str, Any], config: dict[str, Any], fuse: bool) -> BytePairTokenizer:
    where = str(path)
    model = data["model"]
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise UnsupportedTokenizerError(f"{where}: BPE option {key}={model[key]!r} is not supported")
    pre = _pretokenize.from_hf_json(data.get("pre_tokenizer"), where)
    normalizer = _normalize.from_hf_json(data.get("normalizer"), where)
    added = [
        AddedToken(
            content=t["content"],
            id=int(t["id"]),
            special=bool(t.get("special", False)),
            lstrip=bool(t.get("lstrip", False)),
            rstrip=bool(t.get("rstrip", False)),
            single_word=bool(t.get("single_word", False)),
            normalized=bool(t.get("normalized", False)),
        )
        for t in data.get("added_tokens", [])
    ]
    merges: list[tuple[str, str]] = []
    for m in model.get("merges", []):
        first, second = m.split(" ", 1) if isinstance(m, str) else m
        merges.append((str(first), str(second)))
    ignore_merges = bool(model.get("ignore_merges", False))
    tables = byte_level_tables(
        model["vocab"], merges, {t.id: t.content for t in added}, where, ignore_merges=ignore_merges
    )
    ids = {t.content: t.id for t in added} | {k: v for k, v in model["vocab"].items()}

    def id_of(key: str) -> int | None:
        text = _token_text(config.get(key))
        return None if text is None else ids.get(text)

    bos, eos = id_of("bos_token"), id_of("eos_token")
    add_bos, add_eos = _post_processor_adds(data.get("post_processor"), bos, eos)
    add_bos = bool(config.get("add_bos_token", add_bos))
    add_eos = bool(config.get("add_eos_token", add_eos))
    return BytePairTokenizer(
        name=path.name if path.name != "tokenizer.json" else path.parent.name or path.name,
        ranks=tables.ranks,
        id_of_rank=tables.id_of_rank,
        id_to_bytes=tables.id_to_bytes,
        pre=pre,
        added=added,
        normalizer=normalizer,
        bos_id=bos,
        eos_id=eos,
        pad_id=id_of("pad_token"),
        chat_template=_chat_template(config),
        add_bos_default=add_bos,
        add_eos_default=add_eos,
        merges=tables.merges,
        ignore_merges=ignore_merges,
        drop_from=tables.drop_from,
        fuse=fuse,
    )


def _chat_template(config: dict[str, Any]) -> str | None:
    tpl = config.get("chat_template")
    if isinstance(tpl, list):  # named templates: keep the default one
        named = {t.get("name"): t.get("template") for t in tpl}
        tpl = named.get("default")
    return tpl if isinstance(tpl, str) else None


def _post_processor_adds(node: dict[str, Any] | None, bos: int | None, eos: int | None) -> tuple[bool, bool]:
    """Whether a TemplateProcessing post-processor puts BOS first / EOS last in a single sequence."""
    if not node:
        return False, False
    nodes = node.get("processors", [node]) if node.get("type") == "Sequence" else [node]
    for n in nodes:
        if n.get("type") == "TemplateProcessing":
            single = n.get("single", [])
            specials = {k: v.get("ids", []) for k, v in n.get("special_tokens", {}).items()}
            if single:
                first, last = (_template_ids(single[i], specials) for i in (0, -1))
                return (bos is not None and bos in first), (eos is not None and eos in last)
    return False, False


def _template_ids(item: dict[str, Any], specials: dict[str, list[int]]) -> list[int]:
    return specials.get(item["SpecialToken"]["id"], []) if "SpecialToken" in item else []
