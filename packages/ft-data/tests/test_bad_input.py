"""Bad input: one-line errors naming the file, the row and the field; nothing skipped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ft_data
from ft_data.errors import DataFileError, DataRowError, MessageError, MissingExtraError

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


@pytest.fixture(scope="module")
def tok(smollm_gguf: Path) -> ft_data.Tokenizer:
    return ft_data.load_tokenizer(smollm_gguf)


def _build(tok, tmp_path: Path, rows: list, name: str = "data.jsonl", **kw):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ft_data.build_dataset(path, tokenizer=tok, use_cache=False, **kw)


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        ({"text": "no messages"}, ["row 2", "field 'messages'", "missing"]),
        ({"messages": "Hi"}, ["row 2", "field 'messages'", "expected list, got str"]),
        (
            {"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]},
            ["row 2", "field 'messages'[0].role", "'assistant' before any 'user'"],
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            ["row 2", "field 'messages'[1].role", "two 'user' messages"],
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
            ["row 2", "field 'messages'[1].role", "unknown role 'bot'"],
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
            ["row 2", "field 'messages'[0].content", "must be a string, got int"],
        ),
        ({"messages": [{"role": "user", "content": "only a question"}]}, ["row 2", "no trainable token"]),
    ],
)
def test_bad_rows(tok, tmp_path: Path, row: dict, parts: list[str]) -> None:
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [GOOD, row])
    _one_line(exc, "data.jsonl", *parts)


def test_bad_files(tok, tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as exc:
        _build(tok, tmp_path, [], name="empty.jsonl")
    _one_line(exc, "empty.jsonl", "no rows")
    with pytest.raises(DataFileError) as exc:
        ft_data.build_dataset(tmp_path / "missing.jsonl", tokenizer=tok, use_cache=False)
    _one_line(exc, "missing.jsonl", "cannot read")
    (tmp_path / "broken.jsonl").write_text(json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataRowError) as exc:
        ft_data.build_dataset(tmp_path / "broken.jsonl", tokenizer=tok, use_cache=False)
    _one_line(exc, "broken.jsonl", "row 2", "invalid JSON")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataFileError) as exc:
        ft_data.build_dataset(tmp_path / "latin1.jsonl", tokenizer=tok, kind="text", use_cache=False)
    _one_line(exc, "latin1.jsonl", "not UTF-8")
    (tmp_path / "data.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(DataFileError) as exc:
        ft_data.build_dataset(tmp_path / "data.txt", tokenizer=tok, use_cache=False)
    _one_line(exc, "data.txt", "unknown data format")
    (tmp_path / "obj.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataFileError) as exc:
        ft_data.build_dataset(tmp_path / "obj.json", tokenizer=tok, use_cache=False)
    _one_line(exc, "obj.json", "expected a JSON list")


def test_instruct_and_text_fields(tok, tmp_path: Path) -> None:
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [{"instruction": "x"}], kind="instruct", template="alpaca")
    _one_line(exc, "row 1", "field 'output'", "missing")
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [{"body": ["x"]}], kind="text", columns={"text": "body"})
    _one_line(exc, "row 1", "field 'body'", "expected str, got list")
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [{"text": ""}], kind="text")
    _one_line(exc, "row 1", "no trainable token")


def test_preference_fields(tok, tmp_path: Path) -> None:
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [{"prompt": "Q", "chosen": "A"}], kind="preference")
    _one_line(exc, "row 1", "field 'rejected'", "missing")
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [{"prompt": "Q", "chosen": "A", "rejected": 3}], kind="preference")
    _one_line(exc, "row 1", "field 'rejected'", "expected a string or a non-empty list of messages")


def test_drop_policy_counts_instead_of_failing(tok, tmp_path: Path) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(DataRowError) as exc:  # truncation would cut away every trained token
        _build(tok, tmp_path, [GOOD, long], max_seq_len=64)
    _one_line(exc, "row 2", "no trained token left after truncation to max_seq_len=64")
    ds = _build(tok, tmp_path, [GOOD, long], max_seq_len=64, length_policy="drop")
    assert (ds.report.rows, ds.report.examples, ds.report.dropped_too_long) == (2, 1, 1)
    with pytest.raises(DataRowError) as exc:
        _build(tok, tmp_path, [long], max_seq_len=64, length_policy="drop")
    _one_line(exc, "every row was dropped")


def test_message_converters() -> None:
    chat = ft_data.from_sharegpt(
        [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], system="Be brief."
    )
    assert [(m.role, m.content) for m in chat] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]
    openai = ft_data.from_openai(
        [
            {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}}
            ]},
            {"role": "tool", "content": "21", "tool_call_id": "c1"},
            {"role": "assistant", "content": "21 degrees"},
        ]
    )  # fmt: skip
    assert openai[0].content == "Weather?"
    assert openai[1].tool_calls[0].arguments == {"city": "Paris"}
    assert openai[1].to_dict()["tool_calls"][0]["function"] == {"name": "w", "arguments": {"city": "Paris"}}
    assert [m.role for m in ft_data.from_alpaca("Add", "2 and 3", "5")] == ["user", "assistant"]
    assert ft_data.from_alpaca("Add", "2 and 3", "5")[0].content == "Add\n\n2 and 3"
    chosen, rejected = ft_data.from_preference(
        [ft_data.Message("user", "Q")],
        [ft_data.Message("assistant", "A")],
        [ft_data.Message("assistant", "B")],
    )
    assert (chosen[-1].content, rejected[-1].content) == ("A", "B")
    with pytest.raises(MessageError, match=r"messages\[2\].role: 'tool' must follow"):
        ft_data.from_openai(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "tool", "content": "c"},
            ]
        )
    with pytest.raises(MessageError, match=r"\[1\].content: assistant message with no content"):
        ft_data.from_openai([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}])
    with pytest.raises(MessageError, match=r"arguments are not JSON"):
        ft_data.from_openai([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [
            {"function": {"name": "w", "arguments": "{oops"}}]}])  # fmt: skip


def test_missing_extra_is_named(tok, tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(MissingExtraError) as exc:
        ft_data.build_dataset(tmp_path / "x.parquet", tokenizer=tok, use_cache=False)
    _one_line(exc, "x.parquet", "pip install 'ft-data[parquet]'")
