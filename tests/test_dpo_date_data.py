"""`ft_recipes.dpo_date_data`: the rejected answers are the model's own greedy answers (checked against
transformers' `generate` on a tiny Llama with SmolLM2's tokenizer), the chosen ones the right dates, the
three splits use disjoint dates, and the files are reused, not regenerated, for the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_recipe_support import make_tiny
from transformers import LlamaForCausalLM

import ft_data
from ft_recipes import date_data, dpo_date_data
from ft_recipes.steps import stop_token_ids

SIZES = {"n_train": 10, "n_val": 4, "n_eval": 5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("dpo_data"))[0]


def _greedy(model_dir: Path, prompts: list[str], chat: bool = True) -> list[str]:
    """transformers' greedy answers, 12 new tokens, stopped at the tokenizer's stop ids."""
    tok = ft_data.load_tokenizer(model_dir)
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = sorted(stop_token_ids(tok))
    answers = []
    for prompt in prompts:
        if chat:
            messages = [{"role": "user", "content": prompt}]
            text = ft_data.apply_chat_template(messages, tokenizer=tok, add_generation_prompt=True)
            ids = tok.encode(text, allow_special=True)
        else:
            ids = tok.encode(prompt)
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=0
        )[0, len(ids) :].tolist()
        answers.append(tok.decode([i for i in out if i not in stops]).strip())
    return answers


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rejected_answers_are_the_models_own(tiny: Path, tmp_path: Path) -> None:
    paths = dpo_date_data.write_files(tmp_path / "data", str(tiny), seed=3, batch_size=4, **SIZES)
    asked, held_out = date_data.make_items(3, SIZES["n_train"] + SIZES["n_val"], SIZES["n_eval"])
    expected = _greedy(tiny, [item["prompt"] for item in asked])
    pairs = _rows(paths["train"]) + _rows(paths["validation"])
    wanted = [
        {"prompt": item["prompt"], "chosen": item["answer"], "rejected": said}
        for item, said in zip(asked, expected, strict=True)
        if said != item["answer"]
    ]
    assert pairs == wanted
    assert len(pairs) == len(asked)  # a random tiny model never writes the right date
    assert _rows(paths["eval"]) == held_out
    dates = [
        {r.get("chosen", r.get("answer")) for r in _rows(paths[s])} for s in ("train", "validation", "eval")
    ]
    assert not dates[0] & dates[1]
    assert not dates[0] & dates[2]
    assert not dates[1] & dates[2]

    # A wrong reference (the prompts without the chat template) gives other answers: the check has teeth.
    unwrapped = _greedy(tiny, [item["prompt"] for item in asked[:6]], chat=False)
    assert sum(a != p["rejected"] for a, p in zip(unwrapped, pairs[:6], strict=True)) >= 4


def test_files_are_reused_for_the_same_settings(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    paths = dpo_date_data.write_files(out, str(tiny), seed=1, **SIZES)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths.values()}
    again = dpo_date_data.write_files(out, str(tiny), seed=1, **SIZES)
    assert again == paths
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths.values()} == before
    other = dpo_date_data.write_files(out, str(tiny), seed=2, **SIZES)
    assert _rows(other["eval"]) != [json.loads(b) for b in before[paths["eval"]][0].decode().splitlines()]


def test_dataset_component_tokenises_each_split(tiny: Path, tmp_path: Path) -> None:
    tok = ft_data.load_tokenizer(tiny)
    args = {"directory": str(tmp_path / "data"), "model_path": str(tiny), "seed": 0, **SIZES}
    train = dpo_date_data.build_dpo_date_dataset(tokenizer=tok, max_seq_len=128, **args)
    val = dpo_date_data.build_dpo_date_dataset(tokenizer=tok, max_seq_len=128, split="validation", **args)
    assert (len(train), len(val)) == (SIZES["n_train"], SIZES["n_val"])
    assert {"chosen_input_ids", "rejected_input_ids"} <= set(train[0])
