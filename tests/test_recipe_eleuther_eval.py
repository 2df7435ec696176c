"""`tune run eleuther_eval` as a real process: lm-eval's results JSON and table, the metrics of lm-eval's HF backend.

The tiny HF model (SmolLM2's tokenizer) is scored on three local tasks: a multiple-choice and a
generation task in ft's JSONL schema and a task YAML found through ``include_path``, with ``limit``,
one few-shot example and ``log_samples``. The run must write ``results.json`` in lm-eval's format (the
keys its CLI writes; lm-eval's ``make_table`` reads it and prints the table the run printed),
``samples_<task>.jsonl`` and ``config.yaml``; its metrics must equal those of
``lm_eval.simple_evaluate`` with lm-eval's own HF backend on the same files and settings. Wrong
variant: the reference without its few-shot example must score the documents differently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lm_eval
import pytest
import yaml
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import make_table
from lm_eval_support import GEN_ROWS, MC_ROWS, make_model, write_jsonl, write_yaml_task

from ft_recipes.eleuther_eval import LocalTask, select_tasks

pytestmark = pytest.mark.slow

FORMAT_KEYS = {
    "results",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "config",
    "lm_eval_version",
    "model_name",
    "task_hashes",
    "total_evaluation_time_seconds",
}


def _metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        task: {k: v for k, v in values.items() if "," in k and "stderr" not in k}
        for task, values in results["results"].items()
    }


def _tune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tune = Path(sys.executable).with_name("tune")
    return subprocess.run([str(tune), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_tune_run_writes_lm_eval_results(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    mc = write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    gen = write_jsonl(tmp_path / "gen.jsonl", GEN_ROWS)
    write_yaml_task(tmp_path / "tasks", "yaml_mc", mc)
    config = {
        "recipe": "eleuther_eval",
        "model": {"_component_": "from_pretrained", "path": str(model)},
        "tokenizer": {"_component_": "load_tokenizer", "path": "${model.path}"},
        "output_dir": "out",
        "tasks": ["yaml_mc"],
        "include_path": "tasks",
        "local_tasks": [
            {"name": "mc", "data": "mc.jsonl"},
            {"name": "gen", "data": "gen.jsonl", "max_gen_toks": 8},
        ],
        "limit": 5,
        "num_fewshot": 1,
        "batch_size": 3,
        "log_samples": True,
        "bootstrap_iters": 0,
        "seed": 7,
        "device": "cpu",
        "precision": "fp32",
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    done = _tune(tmp_path, "run", "eleuther_eval", "--config", "eval.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= FORMAT_KEYS, set(results)
    assert set(results["results"]) == {"yaml_mc", "mc", "gen"}
    assert make_table(results) in done.stdout  # lm-eval's own table of the written file was printed
    assert results["n-shot"] == {"yaml_mc": 1, "mc": 1, "gen": 1}
    assert all(v["effective"] == 5 for v in results["n-samples"].values())
    for task in ("yaml_mc", "mc", "gen"):
        lines = (out / f"samples_{task}.jsonl").read_text().splitlines()
        assert len(lines) == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["limit"] == 5
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", "config.yaml", "samples_yaml_mc.jsonl", "samples_mc.jsonl", "samples_gen.jsonl"]
    )

    # The same evaluation with lm-eval's HF backend, in this process.
    selection = select_tasks(
        ["yaml_mc"],
        [LocalTask("mc", str(mc)), LocalTask("gen", str(gen), max_gen_toks=8)],
        tmp_path / "tasks",
    )
    hf = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=4)

    def reference(num_fewshot: int) -> dict[str, Any]:
        out = lm_eval.simple_evaluate(
            model=hf,
            tasks=selection.objects,
            task_manager=selection.manager,
            limit=5,
            num_fewshot=num_fewshot,
            log_samples=True,
            bootstrap_iters=0,
            random_seed=7,
            numpy_random_seed=7,
            torch_random_seed=7,
            fewshot_random_seed=7,
        )
        assert out is not None
        return out

    expected = reference(1)
    assert _metrics(results) == _metrics(expected)
    written = _written_scores(out / "samples_mc.jsonl")
    assert _worst(written, _scores(expected, "mc")) <= 1e-4
    assert [d[0] for d in _written_scores(out / "samples_gen.jsonl", text=True)] == [
        d[0] for d in _scores(expected, "gen")
    ]
    # Wrong variant: the reference without its few-shot example scores every document differently.
    assert _worst(written, _scores(reference(0), "mc")) > 1.0


def _written_scores(path: Path, text: bool = False) -> list[list[Any]]:
    """Per document (in document order) the responses of a ``samples_<task>.jsonl`` lm-eval wrote
    (it writes each response as text)."""
    rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
    return [[r[0] if text else float(r[0][0]) for r in row["resps"]] for row in rows]


def _scores(results: dict[str, Any], task: str) -> list[list[Any]]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0][0] if isinstance(r[0], tuple) else r[0] for r in s["resps"]] for s in samples]


def _worst(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for da, db in zip(a, b, strict=True) for x, y in zip(da, db, strict=True))


def test_training_eval_runs_the_same_lm_eval_tasks(tmp_path: Path) -> None:
    """A LoRA run's ``eval:`` with lm-eval tasks, before and after training, writes the results that
    `tune run eleuther_eval` writes for the base model and for the saved adapter on it."""
    model = make_model(tmp_path)  # also writes train.jsonl (make_tiny)
    write_jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    write_jsonl(tmp_path / "gen.jsonl", GEN_ROWS)
    tasks = [{"name": "mc", "data": "mc.jsonl"}, {"name": "gen", "data": "gen.jsonl", "max_gen_toks": 8}]
    train = {
        "recipe": "lora_finetune_single_device",
        "model": {"_component_": "from_pretrained", "path": str(model)},
        "tokenizer": {"_component_": "load_tokenizer", "path": str(model)},
        "dataset": {"_component_": "build_dataset", "source": "train.jsonl", "use_cache": False},
        "output_dir": "run",
        "device": "cpu",
        "precision": "fp32",
        "batch_size": 2,
        "max_seq_len": 64,
        "max_steps": 3,
        "optimizer": {"lr": 0.02},
        "eval": {"local_tasks": tasks, "limit": 5, "batch_size": 3},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    done = _tune(tmp_path, "run", "lora_finetune_single_device", "--config", "train.yaml")
    assert done.returncode == 0, done.stderr[-3000:]
    during = {
        name: _metrics(json.loads((tmp_path / "run" / f"lm_eval_{name}" / "results.json").read_text()))
        for name in ("base", "tuned")
    }
    assert set(during["tuned"]) == {"mc", "gen"}
    for name, adapter in (("base", None), ("tuned", "run/adapter")):
        config = {
            "model": {"_component_": "from_pretrained", "path": str(model)},
            "tokenizer": {"_component_": "load_tokenizer", "path": "${model.path}"},
            "output_dir": f"alone_{name}",
            "adapter": adapter,
            "local_tasks": tasks,
            "limit": 5,
            "batch_size": 3,
            "device": "cpu",
            "precision": "fp32",
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        alone = _tune(tmp_path, "run", "eleuther_eval", "--config", f"{name}.yaml")
        assert alone.returncode == 0, alone.stderr[-3000:]
        assert _metrics(json.loads((tmp_path / f"alone_{name}" / "results.json").read_text())) == during[name]
