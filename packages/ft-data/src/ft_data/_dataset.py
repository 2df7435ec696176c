"""Tokenised datasets: rows -> (input_ids, labels), with a length policy and an on-disk cache.

Kinds of examples:

* ``chat``: OpenAI ``messages`` or ShareGPT ``conversations`` rendered with a chat template;
* ``instruct``: Alpaca ``instruction`` / ``input`` (optional) / ``output``, as a user and an
  assistant message through the same template;
* ``text``: plain ``text`` for completion training (BOS when the tokenizer adds one, EOS appended),
  every token trained;
* ``preference``: prompt + chosen + rejected pairs, built by `build_preference_dataset` (``columns``
  is its ``column_map``).

`columns` maps these field names to the data's own column names. Examples longer than
``max_seq_len`` are truncated or dropped (``length_policy``); both are counted in the report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ft_data import _cache
from ft_data._chat import TrainOn, tokenize_chat
from ft_data._labels import IGNORE_INDEX, labels_from_mask
from ft_data._messages import Message, from_alpaca, from_openai, from_sharegpt
from ft_data._protocol import Tokenizer
from ft_data._sources import RowSource, read_rows
from ft_data._template import resolve_template
from ft_data.errors import ChatTemplateError, DataCacheError, DataRowError, MessageError

__all__ = [
    "DatasetReport",
    "Kind",
    "LengthPolicy",
    "TokenizedDataset",
    "build_dataset",
    "open_cache",
    "store_cache",
]

Kind = Literal["chat", "instruct", "text", "preference"]
LengthPolicy = Literal["truncate", "drop"]
CACHE_FORMAT = 1
_NEEDED = {
    "chat": ("messages",),
    "instruct": ("instruction", "output"),
    "text": ("text",),
    "preference": ("chosen", "rejected"),
}


@dataclass(frozen=True)
class DatasetReport:
    """What building a dataset did.

    Attributes:
        source: File or dataset name.
        rows: Rows read.
        examples: Examples kept.
        truncated: Examples cut to ``max_seq_len``.
        dropped_too_long: Examples dropped for exceeding ``max_seq_len`` (``length_policy="drop"``).
        trained_tokens: Positions with a label (over all kept examples).
        cache: ``built``, ``hit`` or ``rebuilt`` (a corrupt cache file was replaced), or ``off``.
        cache_path: The cache file, if any.
    """

    source: str
    rows: int
    examples: int
    truncated: int
    dropped_too_long: int
    trained_tokens: int
    cache: str = "off"
    cache_path: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.source}: {self.rows} rows -> {self.examples} examples, {self.truncated} truncated, "
            f"{self.dropped_too_long} dropped over max_seq_len, {self.trained_tokens} trained tokens, "
            f"cache {self.cache}"
        )


class TokenizedDataset:
    """Tokenised examples: ``ds[i]`` is a dict of int lists (``input_ids`` and ``labels``, or the four
    preference fields); `lengths` feeds packing without touching the examples."""

    def __init__(self, fields: dict[str, list[list[int]]], report: DatasetReport) -> None:
        self.fields = fields
        self.report = report
        ids = [k for k in fields if k.endswith("input_ids")]
        self.lengths = [max(len(fields[k][i]) for k in ids) for i in range(len(fields[ids[0]]))]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {k: v[index] for k, v in self.fields.items()}


def open_cache(
    src: RowSource,
    tokenizer: Tokenizer,
    template_source: str | None,
    settings: Mapping[str, Any],
    cache_dir: str | os.PathLike[str] | None,
    use_cache: bool,
) -> tuple[Path | None, str, TokenizedDataset | None]:
    """The cache file of a build and, when it holds a valid entry, the dataset read from it.

    Returns:
        ``(path, state, hit)``: the file (None without cache), ``off`` / ``built`` / ``rebuilt`` (a
        corrupt file is replaced) for the build to report, and the cached dataset or None.
    """
    from ft_data import __version__

    if not use_cache:
        return None, "off", None
    key = _cache.cache_key(
        data=src.fingerprint,
        tokenizer=_cache.tokenizer_fingerprint(tokenizer),
        template=template_source,
        settings=settings,
        version=__version__,
    )
    root = Path(cache_dir) if cache_dir is not None else _cache.default_cache_dir()
    path = root / f"{key}.ftdata"
    if not path.is_file():
        return path, "built", None
    try:
        cached, stored = _cache.read_cache(path)
    except DataCacheError:
        return path, "rebuilt", None
    return (
        path,
        "hit",
        TokenizedDataset(cached, DatasetReport(**{**stored, "cache": "hit", "cache_path": str(path)})),
    )


def store_cache(path: Path | None, fields: Mapping[str, list[list[int]]], report: DatasetReport) -> None:
    """Write a finished build to its cache file (nothing without cache)."""
    if path is not None:
        body = {k: v for k, v in asdict(report).items() if k not in ("cache", "cache_path")}
        _cache.write_cache(path, fields, body)


def _field(
    row: Mapping[str, Any], name: str, columns: Mapping[str, str], where: str, kind: type | None
) -> Any:
    col = columns.get(name, name)
    if col not in row or row[col] is None:
        raise DataRowError(f"{where}: field '{col}': missing (needed as '{name}')")
    value = row[col]
    if kind is not None and not isinstance(value, kind):
        raise DataRowError(f"{where}: field '{col}': expected {kind.__name__}, got {type(value).__name__}")
    return value


def _messages(value: Any, where: str) -> list[Message]:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]:
        return from_sharegpt(value, where=where)
    return from_openai(value, where=where)


def _chat_of(row: Mapping[str, Any], kind: Kind, columns: Mapping[str, str], where: str, system: str | None):
    if kind == "instruct":
        instruction = _field(row, "instruction", columns, where, str)
        extra = row.get(columns.get("input", "input")) or ""
        if not isinstance(extra, str):
            raise DataRowError(f"{where}: field '{columns.get('input', 'input')}': expected str")
        return from_alpaca(instruction, extra, _field(row, "output", columns, where, str), system=system)
    mapped = [n for n in ("messages", "conversations") if n in columns]
    present = [n for n in ("messages", "conversations") if n in row]
    name = (mapped or present or ["messages"])[0]
    col = columns.get(name, name)
    chat = _messages(_field(row, name, columns, where, list), f"{where}: field '{col}'")
    if system is not None and chat[0].role != "system":
        chat.insert(0, Message("system", system))
    return chat


def _fit(
    ids: list[int], labels: list[int], max_len: int, policy: str, where: str
) -> tuple[list[int], list[int]] | None:
    if len(ids) <= max_len:
        return ids, labels
    if policy == "drop":
        return None
    ids, labels = ids[:max_len], labels[:max_len]
    labels[-1] = IGNORE_INDEX  # its target was cut off
    if all(x == IGNORE_INDEX for x in labels):
        raise DataRowError(
            f"{where}: no trained token left after truncation to max_seq_len={max_len}; "
            "use length_policy='drop' or a larger max_seq_len"
        )
    return ids, labels


def build_dataset(
    source: str | os.PathLike[str],
    *,
    tokenizer: Tokenizer,
    kind: Kind = "chat",
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    data_format: str | None = None,
    template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    system: str | None = None,
    train_on: TrainOn | None = None,
    special_in_content: Literal["text", "match"] = "text",
    end_of_turn: Sequence[str] = (),
    max_seq_len: int = 2048,
    length_policy: LengthPolicy = "truncate",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> TokenizedDataset:
    """Read, convert and tokenise a dataset once, caching the result on disk.

    Args:
        source: Local file or `datasets` name / directory (see `read_rows`).
        tokenizer: The model's tokenizer.
        kind: ``chat``, ``instruct``, ``text`` or ``preference``.
        columns: Field name -> column name in the data (e.g. ``{"messages": "dialog"}``).
        split: Split for `datasets` sources.
        data_format: Force a reader instead of the file suffix.
        template: Chat template (``None``: the tokenizer's own; a built-in name, file or Jinja source).
        template_kwargs: Extra template variables (fix ``date_string`` for templates that print today).
        tools: Tool schemas passed to the template for every example.
        system: System prompt added to chats that have none.
        train_on: ``assistant`` (default), ``last`` or ``all`` (preference pairs: ``last`` only).
        special_in_content: See `tokenize_chat`.
        end_of_turn: Extra end-of-turn markers, see `tokenize_chat`.
        max_seq_len: Longest example kept (tokens).
        length_policy: ``truncate`` or ``drop`` examples over `max_seq_len`.
        cache_dir: Cache directory (default `$FT_DATA_CACHE` or ``~/.cache/ft/data``).
        use_cache: Read and write the cache.

    Raises:
        DataFileError, DataRowError: Bad input, naming the file, the row and the field.
    """
    columns = dict(columns or {})
    if kind not in _NEEDED:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(_NEEDED)}")
    if kind == "preference":
        if train_on not in (None, "last"):
            raise ValueError(f"train_on={train_on!r}: preference pairs train on the answer only ('last')")
        from ft_data._preference import build_preference_dataset

        return build_preference_dataset(
            source,
            tokenizer=tokenizer,
            column_map=columns,
            split=split,
            data_format=data_format,
            template=template,
            template_kwargs=template_kwargs,
            tools=tools,
            system=system,
            special_in_content=special_in_content,
            end_of_turn=end_of_turn,
            max_seq_len=max_seq_len,
            length_policy=length_policy,
            cache_dir=cache_dir,
            use_cache=use_cache,
        )
    train_on = train_on or "assistant"
    if length_policy not in ("truncate", "drop"):
        raise ValueError(f"length_policy={length_policy!r}: expected 'truncate' or 'drop'")
    src = read_rows(source, split=split, data_format=data_format)
    template_source = None if kind == "text" else resolve_template(template, tokenizer)[1]
    settings = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "columns": sorted(columns.items()),
        "template_kwargs": dict(template_kwargs or {}),
        "tools": tools,
        "system": system,
        "train_on": train_on,
        "special_in_content": special_in_content,
        "end_of_turn": list(end_of_turn),
        "max_seq_len": max_seq_len,
        "length_policy": length_policy,
    }
    path, state, hit = open_cache(src, tokenizer, template_source, settings, cache_dir, use_cache)
    if hit is not None:
        return hit
    chat_kw = dict(
        tokenizer=tokenizer,
        template=template_source,
        tools=tools,
        train_on=train_on,
        special_in_content=special_in_content,
        end_of_turn=end_of_turn,
        **(template_kwargs or {}),
    )
    fields: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    truncated = dropped = 0
    for n, row in enumerate(src.rows, start=1):
        where = f"{src.name}: row {n}"
        try:
            if kind == "text":
                text = _field(row, "text", columns, where, str)
                ids = tokenizer.encode(
                    text, add_bos=bool(getattr(tokenizer, "add_bos_default", False)), add_eos=True
                )
                pairs = [(ids, labels_from_mask(ids, [False] + [True] * (len(ids) - 1)))]
            else:
                chat = tokenize_chat(_chat_of(row, kind, columns, where, system), **chat_kw)  # type: ignore[arg-type]
                pairs = [(chat.input_ids, chat.labels)]
        except (MessageError, ChatTemplateError) as exc:
            raise DataRowError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from exc
        if kind == "text" and len(pairs[0][0]) < 2:
            raise DataRowError(
                f"{where}: field '{columns.get('text', 'text')}': no trainable token (empty text)"
            )
        too_long = any(len(ids) > max_seq_len for ids, _ in pairs)
        fitted = [_fit(ids, labels, max_seq_len, length_policy, where) for ids, labels in pairs]
        if any(f is None for f in fitted):
            dropped += 1
            continue
        truncated += too_long
        for ids, labels in fitted:  # type: ignore[misc]
            fields["input_ids"].append(ids)
            fields["labels"].append(labels)
    report = DatasetReport(
        source=src.name,
        rows=len(src.rows),
        examples=len(fields["labels"]),
        truncated=truncated,
        dropped_too_long=dropped,
        trained_tokens=sum(x != IGNORE_INDEX for seq in fields["labels"] for x in seq),
        cache=state,
        cache_path=None if path is None else str(path),
    )
    if report.examples == 0:
        raise DataRowError(
            f"{src.name}: every row was dropped (max_seq_len={max_seq_len}, length_policy=drop)"
        )
    store_cache(path, fields, report)
    return TokenizedDataset(fields, report)
