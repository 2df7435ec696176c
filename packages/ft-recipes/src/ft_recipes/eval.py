"""Recipe ``eval`` and the evaluation step of the training recipes: greedy answers to prompts, scored.

Items are ``{"prompt": ..., "answer": ...}`` (JSONL, one per line; an optional ``system``). Prompts go
through the model's chat template, are generated greedily in batches (ft-models' ``generate``, left
padded, with the model's stop tokens) and each prediction is scored against its answer by a metric:
``exact_match`` (after stripping whitespace), ``contains``, or any ``module.function(prediction,
answer) -> float`` given by dotted path. The score is the mean in percent; every item's prompt,
answer, prediction and score go to a JSONL results file.

``tune run eval --config my_eval.yaml`` scores a model (HF directory, GGUF, optional PEFT adapter).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ft_recipes._train_config import AttentionName
from ft_recipes.config import Component, PositiveInt

__all__ = ["FILE_KEYS", "METRICS", "PROVIDED", "Config", "EvalResult", "evaluate", "main", "read_items"]

DISTRIBUTED = False
PROVIDED = {"model": {"dtype", "device"}}
FILE_KEYS = ("model.path", "tokenizer.path", "adapter", "data")

Metric = Callable[[str, str], float]


def exact_match(prediction: str, answer: str) -> float:
    """1 when the prediction equals the answer once surrounding whitespace is stripped."""
    return float(prediction.strip() == answer.strip())


def contains(prediction: str, answer: str) -> float:
    """1 when the answer appears anywhere in the prediction."""
    return float(answer.strip() in prediction)


METRICS: dict[str, Metric] = {"exact_match": exact_match, "contains": contains}


def resolve_metric(name: str) -> Metric:
    """A metric by short name (:data:`METRICS`) or dotted path ``package.module.function``.

    Raises:
        ComponentError: The dotted path cannot be imported.
    """
    if name in METRICS:
        return METRICS[name]
    from ft_recipes.config import resolve_component

    return resolve_component(name, key="metric", allow_any=True)  # type: ignore[no-any-return]


def read_items(path: str | Path, key: str = "data") -> list[dict[str, str]]:
    """Items of a prompt/answer JSONL file.

    Args:
        path: The JSONL file.
        key: The config key that named it (``data``, ``eval.data``), which every message starts with.

    Raises:
        MissingFileError: The file does not exist or cannot be read as UTF-8 text.
        UserError: A line that is not JSON or lacks ``prompt`` / ``answer``, or no item at all.
    """
    from ft_recipes._jsonl import read_jsonl_objects
    from ft_recipes.errors import UserError

    where = f"{key}: {path}"
    items = []
    for n, row in read_jsonl_objects(path, where):
        if not isinstance(row.get("prompt"), str) or "answer" not in row:
            raise UserError(f"{where}: line {n}: expected an object with 'prompt' and 'answer'")
        items.append({k: str(v) for k, v in row.items()})
    if not items:
        raise UserError(f"{where}: no items")
    return items


@dataclass
class EvalResult:
    """Mean score in percent and one record per item (prompt, answer, prediction, score)."""

    score: float
    records: list[dict[str, Any]]

    def write(self, path: str | Path) -> None:
        """One JSON line per item."""
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")


def evaluate(
    model: Any,
    tokenizer: Any,
    items: Sequence[dict[str, str]],
    *,
    metric: str | Metric = "exact_match",
    batch_size: int = 16,
    max_new_tokens: int = 32,
    chat_template: bool = True,
) -> EvalResult:
    """Answer every prompt greedily and score it; the model is put back in its previous mode.

    Args:
        model: An ft ``CausalLM`` (LoRA-wrapped or not).
        tokenizer: Its tokenizer (ft-data protocol).
        items: ``{"prompt", "answer"}`` dicts, optionally ``system``.
        metric: A name from :data:`METRICS`, a dotted path, or a callable ``(prediction, answer) -> float``.
        batch_size: Prompts generated together (left-padded).
        max_new_tokens: Longest answer.
        chat_template: Wrap each prompt in the tokenizer's chat template (else the raw text).
    """
    import torch

    import ft_data
    import ft_models
    from ft_recipes._setup import stop_token_ids

    score_fn = resolve_metric(metric) if isinstance(metric, str) else metric
    stops = sorted(stop_token_ids(tokenizer))
    prompts = []
    for item in items:
        if chat_template:
            messages = [{"role": "system", "content": item["system"]}] if item.get("system") else []
            messages.append({"role": "user", "content": item["prompt"]})
            text = ft_data.apply_chat_template(messages, tokenizer=tokenizer, add_generation_prompt=True)
            prompts.append(tokenizer.encode(text, allow_special=True))
        else:
            prompts.append(tokenizer.encode(item["prompt"]))
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                new_ids, lengths = ft_models.generate(
                    model, prompts[start : start + batch_size], max_new_tokens, eos_token_id=stops or None
                )
                for row, n in zip(new_ids.tolist(), lengths.tolist(), strict=True):
                    predictions.append(tokenizer.decode([i for i in row[:n] if i not in stops]))
    finally:
        model.train(was_training)
    records: list[dict[str, Any]] = []
    for item, prediction in zip(items, predictions, strict=True):
        value = float(score_fn(prediction, item["answer"]))
        records.append(
            {"prompt": item["prompt"], "answer": item["answer"], "prediction": prediction, "score": value}
        )
    score = 100.0 * sum(r["score"] for r in records) / len(records)
    return EvalResult(score, records)


@dataclass
class Config:
    """Schema of an ``eval`` config; ``batch_size`` and ``max_new_tokens`` are >= 1 (zero would score
    nothing)."""

    model: Component
    tokenizer: Component
    data: str
    adapter: str | None = None
    metric: str = "exact_match"
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    chat_template: bool = True
    output: str | None = None  # results JSONL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    attention: AttentionName = "auto"  # see ft_recipes.training.apply_attention


def main(cfg: Config) -> None:
    """Load, answer every prompt, print the score, write the results."""
    from ft_recipes._assets import resolve_path
    from ft_recipes._setup import load_model_and_tokenizer, pick_device
    from ft_recipes.training import apply_attention, resolve_inference_precision

    items = read_items(resolve_path(cfg.data))  # a bad file is refused before the model is loaded
    device = pick_device(cfg.device)
    precision = resolve_inference_precision(cfg.precision, device)
    dtype = str(precision.dtype).removeprefix("torch.")
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, cfg.tokenizer, cfg.adapter, device, precision.dtype
    )
    attention = apply_attention(model, cfg.attention, device=device, dtype=precision.dtype, training=False)
    print(f"[eval] device={device} dtype={dtype} attention={attention} ({precision.reason})", file=sys.stderr)
    result = evaluate(
        model,
        tokenizer,
        items,
        metric=cfg.metric,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        chat_template=cfg.chat_template,
    )
    if cfg.output:
        result.write(cfg.output)
    print(f"[eval] {cfg.metric}: {result.score:.1f} ({len(items)} prompts)")
    sys.stdout.flush()
