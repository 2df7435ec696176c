"""Shared by the lm-eval tests: a tiny HF Llama (awkward shapes, SmolLM2's real tokenizer) and local tasks.

The model is :func:`test_recipe_support.make_tiny`'s (hidden 60, 3 query heads of 24 over one
key/value head, tied embeddings, weights of std 0.3), saved with a ``generation_config.json`` whose
``eos_token_id`` lists ft's stop ids (EOS plus the tokenizer's end-of-turn markers), so transformers'
``generate`` stops where ft's does, as a chat model's own generation config makes it. The task data
are built here from plain rows: a multiple-choice set sharing contexts (the case ft computes once per
context), and a generation set.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_recipe_support import make_tiny

import ft_data
import ft_models
from ft_recipes.steps import stop_token_ids

__all__ = ["GEN_ROWS", "MC_ROWS", "make_model", "write_jsonl", "write_yaml_task"]

MC_ROWS = [
    {
        "prompt": f"Question: which number follows {i}?\nAnswer:",
        "choices": [str(i + 1), str(i + 2), f"{i} again", "none of these numbers"],
        "answer": i % 4,
    }
    for i in range(10)
]
GEN_ROWS = [{"prompt": f"Count on from {i}: {i}, {i + 1},", "answer": f"{i + 2}"} for i in range(6)]


def make_model(root: Path) -> Path:
    """The tiny HF directory (tokenizer included) under ``root``."""
    model_dir, _ = make_tiny(root)
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = sorted(stop_token_ids(tok))
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    return model_dir


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_yaml_task(directory: Path, name: str, data: Path) -> Path:
    """An lm-eval task YAML (multiple choice over ``data``'s prompt/choices/answer rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
    (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return directory
