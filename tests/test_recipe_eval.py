"""`ft_recipes.eval.evaluate` against transformers' greedy generation on a tiny Llama with SmolLM2's tokenizer.

Batched (left-padded) greedy answers must equal transformers' answers to each prompt alone; the score
is the metric's mean in percent. The raw prompt without the chat template is shown to give other
answers (the template is really applied).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_recipe_support import make_tiny
from transformers import LlamaForCausalLM

import ft_data
import ft_models
from ft_recipes.eval import EvalResult, evaluate
from ft_recipes.steps import stop_token_ids

PROMPTS = ["What is 2 + 2?", "Name a colour.", "Say hello", "Count to three, please, slowly"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("eval"))[0]


def _reference(model_dir: Path, tok: ft_data.Tokenizer, chat: bool) -> list[str]:
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = sorted(stop_token_ids(tok))
    answers = []
    for prompt in PROMPTS:
        if chat:
            text = ft_data.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenizer=tok, add_generation_prompt=True
            )
            ids = tok.encode(text, allow_special=True)
        else:
            ids = tok.encode(prompt)
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=stops, pad_token_id=0
        )[0, len(ids) :].tolist()
        answers.append(tok.decode([i for i in out if i not in stops]))
    return answers


def test_batched_greedy_answers_equal_transformers_and_are_scored(tiny: Path) -> None:
    tok = ft_data.load_tokenizer(tiny)
    model = ft_models.from_pretrained(tiny, dtype=torch.float32)
    expected = _reference(tiny, tok, chat=True)
    assert len(set(expected)) == len(expected)  # the prompts give distinct answers
    items = [
        {"prompt": p, "answer": a if i < 3 else "something else"}
        for i, (p, a) in enumerate(zip(PROMPTS, expected, strict=True))
    ]
    result = evaluate(model, tok, items, batch_size=3, max_new_tokens=8)
    assert [r["prediction"] for r in result.records] == expected
    assert result.score == pytest.approx(75.0)
    assert [r["score"] for r in result.records] == [1.0, 1.0, 1.0, 0.0]

    raw = evaluate(model, tok, items, batch_size=3, max_new_tokens=8, chat_template=False)
    assert [r["prediction"] for r in raw.records] == _reference(tiny, tok, chat=False)
    assert [r["prediction"] for r in raw.records] != expected


def _check_pluggable(result: EvalResult, seen: list[tuple[str, str]]) -> None:
    """The metric scored every real prediction: each prompt got a non-empty answer, the metric was called
    once per item with that answer and the item's reference, and the score is the metric's mean."""
    predictions = [r["prediction"] for r in result.records]
    assert all(p.strip() for p in predictions), predictions
    assert seen == [(p, "x") for p in predictions]
    assert [r["score"] for r in result.records] == [_length(p) for p in predictions]
    assert result.score == pytest.approx(100.0 * sum(map(_length, predictions)) / len(predictions))


def _length(prediction: str) -> float:
    return min(len(prediction.strip()), 10) / 10


def test_pluggable_metric(tiny: Path) -> None:
    tok = ft_data.load_tokenizer(tiny)
    model = ft_models.from_pretrained(tiny, dtype=torch.float32)
    items = [{"prompt": p, "answer": "x"} for p in PROMPTS]
    seen: list[tuple[str, str]] = []

    def metric(prediction: str, answer: str) -> float:
        seen.append((prediction, answer))
        return _length(prediction)

    result = evaluate(model, tok, items, metric=metric, max_new_tokens=4)
    _check_pluggable(result, seen)
    assert 0.0 < result.score <= 100.0
    assert evaluate(model, tok, items, metric="exact_match", max_new_tokens=4).score == 0.0

    # Wrong variant: a model whose first new token is always EOS answers nothing; the check must fail.
    eos = tok.eos_id
    hook = model.lm_head.register_forward_hook(
        lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]), 1e4)
    )
    seen.clear()
    try:
        silent = evaluate(model, tok, items, metric=metric, max_new_tokens=4)
    finally:
        hook.remove()
    assert [r["prediction"] for r in silent.records] == [""] * len(items)
    with pytest.raises(AssertionError):
        _check_pluggable(silent, seen)
