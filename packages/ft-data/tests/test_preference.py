"""Preference pairs: every layout, from every source kind, gives the same ids and masks as transformers'
``apply_chat_template`` of the same chat; prompt checks, truncation that keeps the prompt's end, the cache,
the loader's preference batches and the inspection view."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ft_data
from ft_data.errors import DataRowError

QUESTIONS = [
    ("What color is the sky on a clear day?", "Blue, mostly.", "Green with purple dots."),
    ("Name a prime number larger than ten.", "Thirteen is prime.", "Nine."),
    ("Translate 'chat' from French.", "Cat.", "A talk, always."),
]


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def layouts() -> dict[str, list[dict]]:
    """The same pairs in every layout the builder reads (with the column names each layout uses)."""
    return {
        "strings": [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in QUESTIONS],
        "implicit_strings": [{"chosen": f"{q} {c}", "rejected": f"{q} {r}"} for q, c, r in QUESTIONS],
        "conversational": [
            {"prompt": [_user(q)], "chosen": [_bot(c)], "rejected": [_bot(r)]} for q, c, r in QUESTIONS
        ],
        "conversational_implicit": [
            {"chosen": [_user(q), _bot(c)], "rejected": [_user(q), _bot(r)]} for q, c, r in QUESTIONS
        ],
        "torchtune": [
            {"good": [_user(q), _bot(c)], "bad": [_user(q), _bot(r)], "id": i}
            for i, (q, c, r) in enumerate(QUESTIONS)
        ],
        "ultrafeedback": [
            {
                "prompt": q,
                "prompt_id": f"{i:04d}",
                "chosen": [_user(q), _bot(c)],
                "rejected": [_user(q), _bot(r)],
                "messages": [_user(q), _bot(c)],
                "score_chosen": 8.5,
                "score_rejected": 3.0,
            }
            for i, (q, c, r) in enumerate(QUESTIONS)
        ],
    }


COLUMN_MAPS = {"torchtune": {"chosen": "good", "rejected": "bad"}}


@pytest.fixture(scope="module")
def tok(tokenizers) -> ft_data.Tokenizer:
    return tokenizers["smollm"][0]


@pytest.fixture(scope="module")
def hf(tokenizers):
    return tokenizers["smollm"][1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _reference(hf, q: str, answer: str) -> tuple[list[int], list[int]]:
    """transformers' ids of the chat, and the positions of the answer's tokens (answer + <|im_end|>)."""
    ids = hf.apply_chat_template([_user(q), _bot(answer)], tokenize=True, return_dict=False)
    prompt = hf.apply_chat_template([_user(q)], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert ids[: len(prompt)] == prompt
    end = ids.index(hf.convert_tokens_to_ids("<|im_end|>"), len(prompt))
    return ids, list(range(len(prompt), end + 1))


def _trained(labels: list[int]) -> list[int]:
    return [t + 1 for t, x in enumerate(labels) if x != -100]


def test_every_layout_and_source_gives_the_same_ids_and_masks(tok, hf, tmp_path: Path) -> None:
    builds = {}
    for name, rows in layouts().items():
        cm = COLUMN_MAPS.get(name)
        builds[f"{name}.jsonl"] = ft_data.build_preference_dataset(
            _jsonl(tmp_path / f"{name}.jsonl", rows), tokenizer=tok, column_map=cm, use_cache=False
        )
        builds[f"{name}.parquet"] = ft_data.build_preference_dataset(
            _parquet(tmp_path / f"{name}.parquet", rows), tokenizer=tok, column_map=cm, use_cache=False
        )
        if all(isinstance(v, str) for v in rows[0].values()):
            builds[f"{name}.csv"] = ft_data.build_preference_dataset(
                _csv(tmp_path / f"{name}.csv", rows), tokenizer=tok, use_cache=False
            )
    hub = tmp_path / "hub_dir"
    hub.mkdir()
    _jsonl(hub / "train.jsonl", layouts()["ultrafeedback"])
    builds["datasets"] = ft_data.build_preference_dataset(hub, tokenizer=tok, use_cache=False)
    assert len(builds) == 6 * 2 + 2 + 1
    for name, ds in builds.items():
        assert (ds.report.rows, ds.report.examples, ds.report.truncated) == (3, 3, 0), name
        for i, (q, c, r) in enumerate(QUESTIONS):
            for side, answer in (("chosen", c), ("rejected", r)):
                ids, positions = _reference(hf, q, answer)
                assert ds[i][f"{side}_input_ids"] == ids, (name, i, side)
                assert _trained(ds[i][f"{side}_labels"]) == positions, (name, i, side)
                assert ds[i][f"{side}_labels"][positions[0] - 1] == ids[positions[0]]
    # a one-token difference is seen: the answer with the space TRL's prefix cut leaves in front of it
    wrong = ft_data.build_preference_dataset(
        _jsonl(
            tmp_path / "space.jsonl",
            [{"prompt": q, "chosen": " " + c, "rejected": r} for q, c, r in QUESTIONS],
        ),
        tokenizer=tok,
        use_cache=False,
    )
    assert wrong[0]["chosen_input_ids"] != builds["strings.jsonl"][0]["chosen_input_ids"]
    assert wrong[0]["rejected_input_ids"] == builds["strings.jsonl"][0]["rejected_input_ids"]


def test_build_dataset_kind_preference_is_the_same_builder(tok, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", layouts()["torchtune"])
    a = ft_data.build_dataset(
        path, tokenizer=tok, kind="preference", columns=COLUMN_MAPS["torchtune"], use_cache=False
    )
    b = ft_data.build_preference_dataset(
        path, tokenizer=tok, column_map=COLUMN_MAPS["torchtune"], use_cache=False
    )
    assert a.fields == b.fields
    with pytest.raises(ValueError, match="train_on='assistant'"):
        ft_data.build_dataset(path, tokenizer=tok, kind="preference", train_on="assistant", use_cache=False)


def test_extract_prompt_cuts_where_the_texts_differ() -> None:
    assert ft_data.extract_prompt("Sky? Blue.", "Sky? Green.") == ("Sky?", " Blue.", " Green.")
    assert ft_data.extract_prompt("is 12", "is 15") == ("is 1", "2", "5")  # character level, as TRL
    with pytest.raises(ValueError, match="identical"):
        ft_data.extract_prompt("same", "same")
    with pytest.raises(ValueError, match="prefix"):
        ft_data.extract_prompt("Sky? Blue", "Sky? Blue and more")


def test_system_prompt_and_multi_turn_prompt(tok, hf, tmp_path: Path) -> None:
    turns = [_user("Hi"), _bot("Hello! Ask me."), _user("Largest planet?")]
    rows = [{"chosen": [*turns, _bot("Jupiter.")], "rejected": [*turns, _bot("Mars.")]}]
    ds = ft_data.build_preference_dataset(
        _jsonl(tmp_path / "m.jsonl", rows), tokenizer=tok, system="Be brief.", use_cache=False
    )
    chat = [{"role": "system", "content": "Be brief."}, *turns, _bot("Jupiter.")]
    assert ds[0]["chosen_input_ids"] == hf.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert tok.decode([ds[0]["chosen_input_ids"][t] for t in _trained(ds[0]["chosen_labels"])]) == (
        "Jupiter.<|im_end|>"
    )  # the earlier assistant turn is prompt, not trained


def test_truncation_keeps_the_end_of_the_prompt(tok, tmp_path: Path) -> None:
    long_q = "Please answer after reading all of this. " * 12 + "What is two plus two?"
    rows = [{"prompt": long_q, "chosen": "Four.", "rejected": "Five, I think."}, *layouts()["strings"]]
    path = _jsonl(tmp_path / "long.jsonl", rows)
    full = ft_data.build_preference_dataset(path, tokenizer=tok, use_cache=False)
    limit = 60
    assert max(len(full[0]["chosen_input_ids"]), len(full[0]["rejected_input_ids"])) > limit
    assert max(full.lengths[1:]) <= limit
    cut = ft_data.build_preference_dataset(path, tokenizer=tok, max_seq_len=limit, use_cache=False)
    assert (cut.report.examples, cut.report.truncated, cut.report.dropped_too_long) == (4, 1, 0)
    assert "1 truncated" in str(cut.report)
    for side in ("chosen", "rejected"):
        ids, labels = cut[0][f"{side}_input_ids"], cut[0][f"{side}_labels"]
        whole, whole_labels = full[0][f"{side}_input_ids"], full[0][f"{side}_labels"]
        assert len(ids) <= limit
        removed = len(whole) - len(ids)
        assert ids == whole[removed:]
        assert labels == whole_labels[removed:]
    # both sides lost the same prompt tokens, so the prompts stay identical
    assert len(full[0]["chosen_input_ids"]) - len(cut[0]["chosen_input_ids"]) == len(
        full[0]["rejected_input_ids"]
    ) - len(cut[0]["rejected_input_ids"])
    assert all(cut[i] == full[i] for i in range(1, 4))
    dropped = ft_data.build_preference_dataset(
        path, tokenizer=tok, max_seq_len=limit, length_policy="drop", use_cache=False
    )
    assert (dropped.report.examples, dropped.report.truncated, dropped.report.dropped_too_long) == (3, 0, 1)
    assert dropped[0] == full[1]


def test_an_answer_too_long_for_half_the_window_is_cut_at_its_end(tok, tmp_path: Path) -> None:
    rows = [{"prompt": "Count.", "chosen": "one two three " * 30, "rejected": "no."}]
    path = _jsonl(tmp_path / "a.jsonl", rows)
    full = ft_data.build_preference_dataset(path, tokenizer=tok, use_cache=False)
    cut = ft_data.build_preference_dataset(path, tokenizer=tok, max_seq_len=40, use_cache=False)
    ids, labels = cut[0]["chosen_input_ids"], cut[0]["chosen_labels"]
    assert len(ids) == 40
    assert labels[-1] == -100
    prompt_len = _trained(full[0]["chosen_labels"])[0]
    kept = _trained(labels)[0]  # prompt tokens kept: the last half of the window at most
    assert kept == min(prompt_len, 20)
    assert ids[:kept] == full[0]["chosen_input_ids"][prompt_len - kept : prompt_len]
    assert cut[0]["rejected_input_ids"][:kept] == ids[:kept]


def test_cache_hit_and_key(tok, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "t.jsonl", layouts()["torchtune"])
    cm = COLUMN_MAPS["torchtune"]
    first = ft_data.build_preference_dataset(path, tokenizer=tok, column_map=cm, cache_dir=tmp_path / "c")
    again = ft_data.build_preference_dataset(path, tokenizer=tok, column_map=cm, cache_dir=tmp_path / "c")
    assert (first.report.cache, again.report.cache) == ("built", "hit")
    assert again.fields == first.fields
    assert again.report.examples == 3
    other = ft_data.build_preference_dataset(
        path, tokenizer=tok, column_map=cm, max_seq_len=30, cache_dir=tmp_path / "c"
    )
    assert other.report.cache == "built"
    assert other.report.cache_path != first.report.cache_path
    sft = _jsonl(tmp_path / "sft.jsonl", [{"messages": [_user("a"), _bot("b")]}])
    chat = ft_data.build_dataset(sft, tokenizer=tok, cache_dir=tmp_path / "c")
    assert chat.report.cache_path not in (first.report.cache_path, other.report.cache_path)


def test_loader_yields_chosen_then_rejected_rows(tok, tmp_path: Path) -> None:
    ds = ft_data.build_preference_dataset(
        _jsonl(tmp_path / "p.jsonl", layouts()["strings"]), tokenizer=tok, use_cache=False
    )
    loader = ft_data.Loader(ds, batch_size=2, max_seq_len=512, seed=3, packed=False, pad_id=tok.pad_id)
    (batch,) = list(loader)
    pairs = batch["pair_index"].tolist()
    assert batch["input_ids"].shape[0] == 4
    assert len(set(pairs)) == 2
    for row, (side, k) in enumerate([("chosen", 0), ("chosen", 1), ("rejected", 0), ("rejected", 1)]):
        real = batch["document_ids"][row] == 0
        assert batch["input_ids"][row][real].tolist() == ds[pairs[k]][f"{side}_input_ids"]
        assert batch["labels"][row][real].tolist() == ds[pairs[k]][f"{side}_labels"]
        assert (batch["labels"][row][~real] == -100).all()
    with pytest.raises(ValueError, match="not packed"):
        ft_data.Loader(ds, batch_size=2, max_seq_len=512)


def test_inspect_shows_prompt_and_both_answers(tok, tmp_path: Path) -> None:
    ds = ft_data.build_preference_dataset(
        _jsonl(tmp_path / "p.jsonl", layouts()["strings"]), tokenizer=tok, use_cache=False
    )
    view = ft_data.inspect_preference(ds[0], tok)
    assert not any(v.trained for v in view.prompt)
    assert "".join(v.text for v in view.chosen if v.trained) == "Blue, mostly.<|im_end|>"
    assert "".join(v.text for v in view.rejected if v.trained) == "Green with purple dots.<|im_end|>"
    text = ft_data.format_preference(ds[0], tok)
    assert "What color is the sky on a clear day?" in text.splitlines()[1]
    assert "chosen:" in text
    assert "rejected:" in text
    assert "'Blue'" in text
    broken = {**ds[0], "rejected_input_ids": [0, *ds[0]["rejected_input_ids"][1:]]}
    with pytest.raises(ValueError, match="share their prompt"):
        ft_data.inspect_preference(broken, tok)


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        ({"prompt": "Q?", "chosen": "A."}, ["row 2", "field 'rejected'", "missing"]),
        ({"prompt": "Q?", "chosen": "A.", "rejected": "  "}, ["row 2", "field 'rejected'", "empty answer"]),
        (
            {"prompt": [_user("Q?")], "chosen": [_bot("A.")], "rejected": [_bot("")]},
            ["row 2", "field 'rejected'", "empty answer"],
        ),
        (
            {"chosen": [_user("Q?"), _bot("A.")], "rejected": [_user("Other?"), _bot("B.")]},
            ["row 2", "prompts differ", "message 0"],
        ),
        (
            {"prompt": [_user("Q?")], "chosen": [_bot("A.")], "rejected": [_user("B.")]},
            ["row 2", "field 'rejected'", "'assistant'"],
        ),
        (
            {"chosen": [_user("Q?"), _bot("A."), _user("more")], "rejected": [_user("Q?"), _bot("B.")]},
            ["row 2", "field 'chosen'", "last message must be the 'assistant' answer"],
        ),
        (
            {"prompt": [_bot("Q?")], "chosen": [_bot("A.")], "rejected": [_bot("B.")]},
            ["row 2", "chosen", "'assistant' before any 'user'"],
        ),
        ({"chosen": "Same text.", "rejected": "Same text."}, ["row 2", "identical"]),
        ({"prompt": "Q?", "chosen": "A.", "rejected": [_bot("B.")]}, ["row 2", "one is a string"]),
        (
            {
                "prompt": "Q?",
                "chosen": [_user("Q?"), _bot("A.")],
                "rejected": [_user("Q?"), _bot("B.")],
                "score_chosen": 2,
                "score_rejected": 7,
            },
            ["row 2", "'score_chosen' (2) < 'score_rejected' (7)"],
        ),
        (
            {"prompt": "Not it", "chosen": [_user("Q?"), _bot("A.")], "rejected": [_user("Q?"), _bot("B.")]},
            ["row 2", "field 'prompt'", "differs from the last user message"],
        ),
        ({"prompt": "Q?", "chosen": [_bot("A.")], "rejected": [_bot("B.")]}, None),  # fine: a control
    ],
)
def test_bad_rows_name_file_row_and_field(tok, tmp_path: Path, row: dict, parts: list[str] | None) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [layouts()["strings"][0], row])
    if parts is None:
        assert len(ft_data.build_preference_dataset(path, tokenizer=tok, use_cache=False)) == 2
        return
    with pytest.raises(DataRowError) as exc:
        ft_data.build_preference_dataset(path, tokenizer=tok, use_cache=False)
    text = str(exc.value)
    assert "\n" not in text, text
    assert text.startswith(str(path)), text
    for part in parts:
        assert part in text, (part, text)


def test_template_that_renders_the_prompt_differently_is_refused(tok, tmp_path: Path) -> None:
    # a template that prints the answer's word count before the conversation: the "same" prompt differs
    template = (
        "{{ messages[-1]['content'].split() | length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    path = _jsonl(tmp_path / "p.jsonl", layouts()["strings"][:1])
    with pytest.raises(DataRowError, match=r"row 1: the chat template renders the prompt differently"):
        ft_data.build_preference_dataset(path, tokenizer=tok, template=template, use_cache=False)
