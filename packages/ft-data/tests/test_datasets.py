"""Datasets from JSONL / JSON / CSV / Parquet / `datasets`, against transformers' `apply_chat_template`
on a tokenizer loaded from ft's `save_pretrained` output; length policy; the tokenisation cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import ft_data
from ft_data import _cache

CHATS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12345 + 678?"},
        {"role": "assistant", "content": "13023."},
    ],
    [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another one, a larger one please?"},
        {"role": "assistant", "content": "One hundred and one is prime too."},
    ],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
]
ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say a colour.", "input": "", "output": "Blue, like the sky."},
]


@pytest.fixture(scope="module")
def tok(tokenizers) -> ft_data.Tokenizer:
    return tokenizers["smollm"][0]


@pytest.fixture(scope="module")
def hf(tokenizers):
    return tokenizers["smollm"][1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_chat_jsonl_matches_transformers(tok, hf, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    ds = ft_data.build_dataset(path, tokenizer=tok, use_cache=False)
    assert len(ds) == 3
    assert ds.report.rows == 3
    for i, messages in enumerate(CHATS):
        ex = ds[i]
        assert ex["input_ids"] == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
        trained = [t for t in ex["labels"] if t != -100]
        answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert tok.decode(trained) == "".join(answers)
    assert ds.report.trained_tokens == sum(sum(t != -100 for t in ds[i]["labels"]) for i in range(3))


def test_sharegpt_json_and_column_mapping(tok, tmp_path: Path) -> None:
    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    rows = [{"conv": [{"from": speaker[m["role"]], "value": m["content"]} for m in chat]} for chat in CHATS]
    (tmp_path / "sharegpt.json").write_text(json.dumps(rows), encoding="utf-8")
    ds = ft_data.build_dataset(
        tmp_path / "sharegpt.json", tokenizer=tok, columns={"conversations": "conv"}, use_cache=False
    )
    ref = ft_data.build_dataset(
        _jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in CHATS]), tokenizer=tok, use_cache=False
    )
    assert ds.fields == ref.fields


def test_alpaca_csv_with_builtin_template(tok, hf, tmp_path: Path) -> None:
    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA)
    ds = ft_data.build_dataset(path, tokenizer=tok, kind="instruct", template="alpaca", use_cache=False)
    for i, row in enumerate(ALPACA):
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
        ref = hf.apply_chat_template(
            messages, chat_template=ft_data.BUILTIN_TEMPLATES["alpaca"], tokenize=True, return_dict=False
        )
        assert ds[i]["input_ids"] == ref
        assert tok.decode([t for t in ds[i]["labels"] if t != -100]) == row["output"] + "<|im_end|>"


def test_parquet_and_datasets_sources_equal_jsonl(tok, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": m} for m in CHATS]
    ref = ft_data.build_dataset(_jsonl(tmp_path / "ref.jsonl", rows), tokenizer=tok, use_cache=False)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    assert (
        ft_data.build_dataset(tmp_path / "chat.parquet", tokenizer=tok, use_cache=False).fields == ref.fields
    )
    local = tmp_path / "hfdir"
    local.mkdir()
    _jsonl(local / "train.jsonl", rows)
    ds = ft_data.build_dataset(local, tokenizer=tok, use_cache=False)  # `datasets` reads the directory
    assert ds.fields == ref.fields
    assert ds.report.source.endswith("[train]")


def test_text_completion(tok, hf, tmp_path: Path) -> None:
    texts = ["The quick brown fox jumps over the lazy dog.", "12345 + 678 = 13023"]
    ds = ft_data.build_dataset(_jsonl(tmp_path / "t.jsonl", [{"body": t} for t in texts]), tokenizer=tok,
                               kind="text", columns={"text": "body"}, use_cache=False)  # fmt: skip
    for i, text in enumerate(texts):
        ids = [*hf.encode(text, add_special_tokens=False), hf.eos_token_id]
        assert ds[i]["input_ids"] == ids
        assert ds[i]["labels"] == [*ids[1:], -100]


def test_preference(tok, hf, tmp_path: Path) -> None:
    rows = [{"prompt": "Name a prime.", "chosen": "Seven.", "rejected": "Eight."}]
    ds = ft_data.build_dataset(
        _jsonl(tmp_path / "p.jsonl", rows), tokenizer=tok, kind="preference", use_cache=False
    )
    ex = ds[0]
    for side in ("chosen", "rejected"):
        messages = [
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": rows[0][side]},
        ]
        assert ex[f"{side}_input_ids"] == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert tok.decode([t for t in ex[f"{side}_labels"] if t != -100]) == rows[0][side] + "<|im_end|>"
    batch = ft_data.collate_preference([ex, ex], pad_id=tok.pad_id)
    n = max(len(ex["chosen_input_ids"]), len(ex["rejected_input_ids"]))
    assert batch["input_ids"].shape == (4, n)
    for r, side in enumerate(("chosen", "chosen", "rejected", "rejected")):
        real = batch["document_ids"][r] == 0
        assert batch["input_ids"][r][real].tolist() == ex[f"{side}_input_ids"]
        assert batch["labels"][r][real].tolist() == ex[f"{side}_labels"]
        assert (batch["labels"][r][~real] == -100).all()


def test_length_policy(tok, hf, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    lengths = [len(hf.apply_chat_template(m, tokenize=True, return_dict=False)) for m in CHATS]
    limit = sorted(lengths)[1]  # one example is longer
    dropped = ft_data.build_dataset(
        path, tokenizer=tok, max_seq_len=limit, length_policy="drop", use_cache=False
    )
    assert (dropped.report.examples, dropped.report.dropped_too_long, dropped.report.truncated) == (2, 1, 0)
    assert all(n <= limit for n in dropped.lengths)
    cut = ft_data.build_dataset(
        path, tokenizer=tok, max_seq_len=limit, length_policy="truncate", use_cache=False
    )
    assert (cut.report.examples, cut.report.dropped_too_long, cut.report.truncated) == (3, 0, 1)
    long = lengths.index(max(lengths))
    full = hf.apply_chat_template(CHATS[long], tokenize=True, return_dict=False)
    assert cut[long]["input_ids"] == full[:limit]
    assert cut[long]["labels"][-1] == -100
    assert "1 truncated" in str(cut.report)


def test_cache_hit_and_every_key_component(tok, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    kw = dict(tokenizer=tok, cache_dir=cache, max_seq_len=256)
    first = ft_data.build_dataset(path, **kw)
    assert first.report.cache == "built"
    again = ft_data.build_dataset(path, **kw)
    assert again.report.cache == "hit"
    assert again.fields == first.fields
    assert again.report.examples == first.report.examples
    changes = {
        "max_seq_len": dict(max_seq_len=128),
        "length_policy": dict(length_policy="drop"),
        "train_on": dict(train_on="all"),
        "template": dict(template="chatml"),
        "template_kwargs": dict(template_kwargs={"enable_thinking": False}),
        "system": dict(system="Be kind."),
        "special_in_content": dict(special_in_content="match"),
        "columns": dict(columns={"messages": "messages"}),
    }
    for name, change in changes.items():
        assert ft_data.build_dataset(path, **{**kw, **change}).report.cache == "built", name
    # data bytes
    _jsonl(path, [{"messages": m} for m in CHATS[:2]])
    assert ft_data.build_dataset(path, **kw).report.cache == "built"
    # tokenizer files: the same tokenizer saved with another pad token
    saved = tmp_path / "tok"
    tok.save_pretrained(saved)
    config = json.loads((saved / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|endoftext|>"
    (saved / "tokenizer_config.json").write_text(json.dumps(config))
    other = ft_data.load_tokenizer(saved)
    assert other.pad_id != tok.pad_id
    assert ft_data.build_dataset(path, **{**kw, "tokenizer": other}).report.cache == "built"
    # ft-data version
    monkeypatch.setattr(ft_data, "__version__", "9.9.9")
    assert ft_data.build_dataset(path, **kw).report.cache == "built"


def test_stale_cache_would_be_wrong(tok, tokenizers, tmp_path: Path) -> None:
    """Why the tokenizer is in the key: another tokenizer gives other ids for the same data."""
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    llama = tokenizers["llama3"][0]
    a = ft_data.build_dataset(path, tokenizer=tok, template="chatml", cache_dir=tmp_path / "c")
    b = ft_data.build_dataset(path, tokenizer=llama, template="chatml", cache_dir=tmp_path / "c")
    assert b.report.cache == "built"
    assert a.report.cache_path != b.report.cache_path
    assert a.fields != b.fields


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_cache_is_rebuilt(tok, tmp_path: Path, damage: str) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in CHATS])
    first = ft_data.build_dataset(path, tokenizer=tok, cache_dir=tmp_path / "c")
    file = Path(first.report.cache_path)
    data = bytearray(file.read_bytes())
    if damage == "flip":
        data[-5] ^= 0x01  # one bit of one token id
    elif damage == "truncate":
        data = data[: len(data) - 10]
    else:
        data = bytearray(b"not a cache")
    file.write_bytes(bytes(data))
    with pytest.raises(ft_data.errors.DataCacheError):
        _cache.read_cache(file)
    again = ft_data.build_dataset(path, tokenizer=tok, cache_dir=tmp_path / "c")
    assert again.report.cache == "rebuilt"
    assert again.fields == first.fields
    assert ft_data.build_dataset(path, tokenizer=tok, cache_dir=tmp_path / "c").report.cache == "hit"
