"""Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``) -> ft tokenizer.

Byte-level BPE (a ``ByteLevel`` step in the pre-tokenizer) runs natively on tiktoken; any other
model (SentencePiece-style BPE with byte fallback, Unigram, WordPiece) is served by the
``tokenizers`` library through the ``tokenizers`` extra.

Both files are foreign input: :func:`check_tokenizer_json` and :func:`check_tokenizer_config` check the
structure of every part ft reads (``model``, ``vocab``, ``merges``, ``added_tokens``, the normalizer,
pre-tokenizer and post-processor nodes, the special-token names) before any of it is used, so a
malformed file is one :class:`~ft_data.errors.TokenizerFileError` naming the file and the JSON path
(``tokenizer.json: model.merges[3]: ...``), never a ``KeyError`` deep in the BPE tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import regex

from ft_data import _normalize, _pretokenize
from ft_data._added import AddedToken
from ft_data._bpe import BytePairTokenizer
from ft_data._protocol import Tokenizer
from ft_data._vocab import byte_level_tables
from ft_data.errors import TokenizerFileError, UnsupportedTokenizerError

__all__ = ["check_tokenizer_config", "check_tokenizer_json", "load_hf_json", "read_json"]

_MAX_ID = 2**31 - 1  # token ids are stored as int32 (tokenisation cache, tensors)
# Node kinds of tokenizer.json whose Sequence holds its children under this key.
_SEQUENCE_KEYS = {
    "normalizer": "normalizers",
    "pre_tokenizer": "pretokenizers",
    "post_processor": "processors",
}


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
    check_tokenizer_json(data, path)
    cfg_path = path.with_name("tokenizer_config.json")
    config: dict[str, Any] = read_json(cfg_path) if cfg_path.is_file() else {}
    check_tokenizer_config(config, cfg_path)
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
        for t in data.get("added_tokens") or []
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
        vocab_texts=tables.texts,
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


def _fail(path: Path, where: str, what: str) -> TokenizerFileError:
    return TokenizerFileError(f"{path}: {where}: {what}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ID


def _check_node(node: Any, where: str, path: Path, children: str) -> None:
    """A normalizer / pre-tokenizer / post-processor node: null or an object with a string ``type``."""
    if node is None:
        return
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        shown = "object without a string 'type'" if isinstance(node, dict) else _kind(node)
        raise _fail(path, where, f"expected null or an object with a 'type', got {shown}")
    if node["type"] == "Sequence":
        steps = node.get(children)
        if not isinstance(steps, list):
            raise _fail(path, f"{where}.{children}", f"expected a list, got {_kind(steps)}")
        for i, step in enumerate(steps):
            _check_node(step, f"{where}.{children}[{i}]", path, children)
            if step is None:
                raise _fail(path, f"{where}.{children}[{i}]", "expected an object, got null")
    if node["type"] == "Split":
        pattern = node.get("pattern")
        pattern = pattern if isinstance(pattern, dict) else {}
        text = pattern.get("Regex", pattern.get("String"))
        if not isinstance(text, str):
            raise _fail(path, f"{where}.pattern", 'expected {"Regex": str} or {"String": str}')
        if "Regex" in pattern:
            try:
                regex.compile(text)
            except regex.error as exc:
                raise _fail(path, f"{where}.pattern.Regex", f"invalid regex ({exc})") from None


def _check_bpe(model: dict[str, Any], path: Path) -> None:
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise _fail(path, "model.vocab", f"expected an object of token -> id, got {_kind(vocab)}")
    for token, i in vocab.items():
        if not _is_id(i):
            raise _fail(path, f"model.vocab[{token!r}]", f"expected a non-negative integer id, got {i!r}")
    merges = model.get("merges", [])
    if not isinstance(merges, list):
        raise _fail(path, "model.merges", f"expected a list, got {_kind(merges)}")
    for i, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise _fail(path, f"model.merges[{i}]", f'expected "a b" or ["a", "b"], got {merge!r}'[:200])


def check_tokenizer_json(data: Any, path: Path) -> None:
    """Check the structure of a parsed ``tokenizer.json`` (the parts ft reads) before it is used.

    Raises:
        TokenizerFileError: naming ``path`` and the JSON path of the first malformed part.
    """
    if not isinstance(data, dict) or "model" not in data:
        raise TokenizerFileError(f"{path}: not a tokenizer.json (no 'model' key)")
    model = data["model"]
    if not isinstance(model, dict):
        raise _fail(path, "model", f"expected an object, got {_kind(model)}")
    if not isinstance(model.get("type"), str):
        raise _fail(path, "model.type", f"expected a string, got {_kind(model.get('type'))}")
    if model["type"] == "BPE":
        _check_bpe(model, path)
    added = [] if data.get("added_tokens") is None else data["added_tokens"]
    if not isinstance(added, list):
        raise _fail(path, "added_tokens", f"expected a list, got {_kind(added)}")
    for i, token in enumerate(added):
        if not isinstance(token, dict):
            raise _fail(path, f"added_tokens[{i}]", f"expected an object, got {_kind(token)}")
        if not _is_id(token.get("id")):
            raise _fail(
                path, f"added_tokens[{i}].id", f"expected a non-negative integer, got {token.get('id')!r}"
            )
        if not isinstance(token.get("content"), str):
            raise _fail(
                path, f"added_tokens[{i}].content", f"expected a string, got {_kind(token.get('content'))}"
            )
    for key, children in _SEQUENCE_KEYS.items():
        _check_node(data.get(key), key, path, children)
    post = data.get("post_processor")
    for i, node in enumerate(post.get("processors", []) if post and post["type"] == "Sequence" else [post]):
        if node and node["type"] == "TemplateProcessing":
            where = "post_processor" if node is post else f"post_processor.processors[{i}]"
            _check_template(node, where, path)


def _check_template(node: dict[str, Any], where: str, path: Path) -> None:
    single = node.get("single", [])
    if not isinstance(single, list) or not all(isinstance(item, dict) for item in single):
        raise _fail(path, f"{where}.single", "expected a list of objects")
    for i, item in enumerate(single):
        special = item.get("SpecialToken")
        if special is not None and not (isinstance(special, dict) and isinstance(special.get("id"), str)):
            raise _fail(path, f"{where}.single[{i}].SpecialToken", "expected an object with a string 'id'")
    specials = node.get("special_tokens", {})
    if not isinstance(specials, dict):
        raise _fail(path, f"{where}.special_tokens", f"expected an object, got {_kind(specials)}")
    for name, entry in specials.items():
        ids = entry.get("ids") if isinstance(entry, dict) else None
        if not (isinstance(ids, list) and all(_is_id(i) for i in ids)):
            raise _fail(path, f"{where}.special_tokens[{name!r}].ids", "expected a list of token ids")


def check_tokenizer_config(config: Any, path: Path) -> None:
    """Check a parsed ``tokenizer_config.json``: an object whose special tokens and template ft can read.

    Raises:
        TokenizerFileError: naming ``path`` and the key.
    """
    if not isinstance(config, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, got {_kind(config)}")
    for key in ("bos_token", "eos_token", "pad_token"):
        value = config.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        if value is not None and not isinstance(text, str):
            raise _fail(path, key, 'expected a string, {"content": str} or null')
    for key in ("add_bos_token", "add_eos_token"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise _fail(path, key, f"expected true, false or null, got {config[key]!r}")
    template = config.get("chat_template")
    if isinstance(template, list):
        if not all(isinstance(t, dict) and isinstance(t.get("template"), str) for t in template):
            raise _fail(path, "chat_template", 'expected a string or a list of {"name", "template"} objects')
    elif template is not None and not isinstance(template, str):
        raise _fail(path, "chat_template", f"expected a string, got {_kind(template)}")
