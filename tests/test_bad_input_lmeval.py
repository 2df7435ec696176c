"""Bad-input corpus, ``eleuther_eval``: unknown task names, bad local task files, a missing model, through real `tune`.

Each case runs `tune run eleuther_eval` in a directory holding a previous evaluation's outputs and
checks with :func:`assert_refused`: exit 2, one ``error:`` line naming the key and the task, file or
line at fault, no traceback, every file byte-identical and nothing new. Local JSONL files are read
before ``tune run`` creates anything (the recipe's ``before_run``) and a missing model path is refused
by ``tune run``'s file check, so only the unknown-name case imports torch and lm-eval (its name is
looked up in lm-eval's own task index, and refused before any model is loaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused

CONFIG = "smollm2/135M_eleuther_eval"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with a previous run's results and a good local task file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"results": {"old": {"acc,none": 0.5}}}))
    (out / "config.yaml").write_text("recipe: eleuther_eval\n")
    rows = [{"prompt": "2 + 2 =", "choices": ["4", "5"], "answer": 0}]
    (tmp_path / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _run(workdir: Path, *overrides: str, names: list[str]) -> str:
    return assert_refused(
        "run", "eleuther_eval", "--config", CONFIG, "output_dir=out", *overrides, cwd=workdir, names=names
    )


def test_unknown_task_name(workdir: Path) -> None:
    line = _run(workdir, "tasks=[arc_easy,hellaswagg]", "local_tasks=[]", names=["tasks.1", "'hellaswagg'"])
    assert "did you mean 'hellaswag'" in line


BAD_FILES = [
    ("not_json.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer":\n', ["line 2", "not JSON"]),
    ("no_prompt.jsonl", '{"question": "a", "answer": "b"}\n', ["line 1", "'prompt'"]),
    ("one_choice.jsonl", '{"prompt": "a", "choices": ["x"], "answer": 0}\n', ["line 1", "'choices'"]),
    ("bad_index.jsonl", '{"prompt": "a", "choices": ["x", "y"], "answer": 2}\n', ["line 1", "not an index"]),
    (
        "mixed.jsonl",
        '{"prompt": "a", "choices": ["x", "y"], "answer": 0}\n{"prompt": "b", "answer": "c"}\n',
        ["line 2", "'choices'"],
    ),
    ("empty.jsonl", "\n", ["no rows"]),
]


@pytest.mark.parametrize(("name", "text", "names"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_jsonl_task_file(workdir: Path, name: str, text: str, names: list[str]) -> None:
    (workdir / name).write_text(text)
    task = f"local_tasks=[{{name: good, data: good.jsonl}}, {{name: bad, data: {name}}}]"
    _run(workdir, task, names=["local_tasks.1.data", name, *names])


def test_missing_task_file_and_include_path(workdir: Path) -> None:
    _run(
        workdir, "local_tasks=[{name: t, data: nowhere.jsonl}]", names=["local_tasks.0.data", "nowhere.jsonl"]
    )
    _run(workdir, "include_path=no_tasks_here", names=["include_path", "no_tasks_here"])


def test_missing_model_path(workdir: Path) -> None:
    _run(workdir, "model.path=no_such_model", names=["model.path", "no_such_model"])


@pytest.mark.slow  # a training process (torch, the real SmolLM2 tokenizer)
def test_training_eval_task_file_refused_before_training(workdir: Path) -> None:
    """A LoRA run's ``eval.local_tasks`` file is read with the data, before the model loads or trains."""
    (workdir / "bad.jsonl").write_text('{"question": "a", "answer": "b"}\n')
    (workdir / "train.jsonl").write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        )
        + "\n"
    )
    assert_refused(
        "run", "lora_finetune_single_device", "--config", "smollm2/135M_lora", "output_dir=fresh",
        "dataset.source=train.jsonl", "device=cpu", "batch_size=1", "gradient_accumulation_steps=1", "eval.local_tasks=[{name: t, data: bad.jsonl}]",
        cwd=workdir, names=["eval.local_tasks.0.data", "line 1", "'prompt'"],
    )  # fmt: skip
