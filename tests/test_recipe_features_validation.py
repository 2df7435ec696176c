"""Validation loss in the training recipes against transformers on the same rows.

Both recipes run (`prepare` + `run`, the path of `tune run`) on a tiny Llama with SmolLM2's tokenizer
and a validation split of 5 chat examples of very different lengths (packed rows, batches of 2: the
last batch is partial). The logged `val_loss` must equal transformers' cross-entropy summed over every
trained token of the split, each example alone (so packing leaked nothing), divided once by their
count, computed on the weights the run wrote at that step. The wrong variant, the mean of per-batch
means over the recipe's own batches, is shown to miss the same tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM

import ft_data
from ft_recipes.runner import prepare, run

BATCH = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("validation")
    model_dir, data = make_tiny(root)
    rows = []
    for i, n in enumerate([1, 14, 3, 22, 6]):
        answer = " ".join(["result", str(i)] + ["then another phrase"] * n)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"held-out question {i}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    val = root / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data, val


def _config(tmp_path: Path, model_dir: Path, data: Path, val: Path, every: int, max_batches: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"validation:\n  dataset: {{_component_: build_dataset, source: {val}, use_cache: false}}\n"
        f"  every_n_steps: {every}\n  max_batches: {max_batches}\n  batch_size: {BATCH}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nmax_steps: 2\n"
        "optimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\n"
    )
    return str(path)


def _example_sums(model_dir: Path, weights: Path, val: Path) -> list[tuple[float, int]]:
    """transformers' summed cross-entropy and trained-token count of each validation example alone."""
    tok = ft_data.load_tokenizer(model_dir)
    ds = ft_data.build_dataset(val, tokenizer=tok, max_seq_len=96, use_cache=False)
    hf = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            ids, labels = torch.tensor([ds[i]["input_ids"]]), torch.tensor(ds[i]["labels"])
            logits = hf(input_ids=ids).logits[0]
            out.append((float(F.cross_entropy(logits, labels, reduction="sum")), int((labels != -100).sum())))
    return out


def _batches(model_dir: Path, val: Path) -> list[list[int]]:
    """Example indices of each validation batch as the recipe reads them (packed rows, in order)."""
    tok = ft_data.load_tokenizer(model_dir)
    ds = ft_data.build_dataset(val, tokenizer=tok, max_seq_len=96, use_cache=False)
    rows = ft_data.Loader(ds, batch_size=BATCH, max_seq_len=96, packed=True, shuffle=False).rows(0)
    return [[i for row in rows[k : k + BATCH] for i in row] for k in range(0, len(rows), BATCH)]


def _records(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_full_recipe_validation_loss_equals_transformers(
    tiny: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, data, val = tiny
    run(prepare("full_finetune_single_device", _config(tmp_path, model_dir, data, val, 1, "null")))
    records = _records(tmp_path / "out")
    assert [("val_loss" in r) for r in records] == [True, True]
    assert records[1]["val_loss"] < records[0]["val_loss"]  # training on similar chats helps

    sums = _example_sums(model_dir, tmp_path / "out" / "model", val)  # the weights after step 2
    batches = _batches(model_dir, val)
    assert len(batches) >= 2
    assert sorted(i for b in batches for i in b) == list(range(5))
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    logged = records[1]["val_loss"]
    assert records[1]["val_tokens"] == sum(n for _, n in sums)
    assert abs(logged - expected) <= 1e-5 * expected, (logged, expected)

    per_batch_means = [sum(sums[i][0] for i in b) / sum(sums[i][1] for i in b) for b in batches]
    wrong = sum(per_batch_means) / len(per_batch_means)
    assert abs(logged - wrong) > 1e-5 * expected, (logged, wrong)  # the wrong variant fails the tolerance

    assert (
        f"[val] step 2: loss {logged:.4f} over {records[1]['val_tokens']} trained tokens"
        in capsys.readouterr().out
    )


def test_lora_recipe_validation_with_max_batches(tiny: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model_dir, data, val = tiny
    cfg = _config(tmp_path, model_dir, data, val, 2, "1")
    run(prepare("lora_finetune_single_device", cfg, ["merge=true", "lora.rank=4"]))
    records = _records(tmp_path / "out")
    assert [("val_loss" in r) for r in records] == [False, True]  # every 2 steps

    sums = _example_sums(model_dir, tmp_path / "out" / "merged", val)  # base + the step-2 adapter
    first = _batches(model_dir, val)[0]
    expected = sum(sums[i][0] for i in first) / sum(sums[i][1] for i in first)
    assert records[1]["val_tokens"] == sum(sums[i][1] for i in first) < sum(n for _, n in sums)
    assert abs(records[1]["val_loss"] - expected) <= 1e-5 * expected, (records[1]["val_loss"], expected)
