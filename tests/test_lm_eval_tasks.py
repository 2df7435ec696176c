"""Whole lm-eval tasks through ft's backend and lm-eval's HF backend: identical metrics, same per-document scores.

Local tasks only (no hub): a multiple-choice task as an lm-eval task YAML found through
``include_path``, and the same rows plus a generation set in ft's JSONL schema
(``ft_recipes.eleuther_eval.select_tasks``). ``lm_eval.simple_evaluate`` runs each task on both
backends; the metrics must be identical and every document's log-likelihoods within 1e-4. A PEFT
adapter is evaluated through lm-eval's own Python API by name (``model="ft"``), applied and merged,
against ``HFLM(peft=...)``. Wrong variants: a duplicated BOS (``add_bos_token=True``) and the base
model without its adapter must both be rejected by the per-document comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval_support import GEN_ROWS, MC_ROWS, make_model, write_jsonl, write_yaml_task
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

import ft_data
import ft_models
from ft_recipes.eleuther_eval import LocalTask, run_lm_eval, select_tasks
from ft_recipes.lm_eval_model import FtLM

TOL = 1e-4
GEN_TOKENS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    model = make_model(root)
    mc = write_jsonl(root / "mc.jsonl", MC_ROWS)
    return {
        "model": model,
        "mc": mc,
        "gen": write_jsonl(root / "gen.jsonl", _gen_rows(model)),
        "yaml_dir": write_yaml_task(root / "tasks", "yaml_mc", mc),
        "root": root,
    }


def _gen_rows(model: Path) -> list[dict[str, str]]:
    """GEN_ROWS whose even rows' answers are the reference backend's own greedy answers, so the
    generation task's exact match is 0.5 on a correct backend, not a trivial 0."""
    hf = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=4)
    kwargs = {"until": ["\n"], "max_gen_toks": GEN_TOKENS, "do_sample": False}
    requests = [Instance("generate_until", {}, (r["prompt"], kwargs), i) for i, r in enumerate(GEN_ROWS)]
    answers = hf.generate_until(requests, disable_tqdm=True)
    return [
        dict(row, answer=answer.strip() if i % 2 == 0 else row["answer"])
        for i, (row, answer) in enumerate(zip(GEN_ROWS, answers, strict=True))
    ]


def _evaluate(lm: Any, tasks: list[Any], manager: Any) -> dict[str, Any]:
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, log_samples=True, bootstrap_iters=0, random_seed=0
    )
    assert out is not None
    return out


def _scores(results: dict[str, Any], task: str) -> list[Any]:
    """Per document, in document order: each request's response (log-likelihood, or text)."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0] for r in s["resps"]] for s in samples]


def _worst(a: list[Any], b: list[Any]) -> float:
    return max(abs(x[0] - y[0]) for da, db in zip(a, b, strict=True) for x, y in zip(da, db, strict=True))


def _metrics(results: dict[str, Any], task: str) -> dict[str, float]:
    return {k: v for k, v in results["results"][task].items() if "," in k and "stderr" not in k}


def _ft_selection(setup: dict[str, Path]) -> Any:
    local = [
        LocalTask("ft_mc", str(setup["mc"])),
        LocalTask("ft_gen", str(setup["gen"]), max_gen_toks=GEN_TOKENS),
    ]
    return select_tasks(["yaml_mc"], local, setup["yaml_dir"])


def test_task_metrics_match_hflm(setup: dict[str, Path]) -> None:
    hf = HFLM(pretrained=str(setup["model"]), device="cpu", dtype="float32", batch_size=4)
    ft = FtLM(str(setup["model"]), device="cpu", dtype="fp32", batch_size=5)
    expected_sel, got_sel = _ft_selection(setup), _ft_selection(setup)
    expected = _evaluate(hf, expected_sel.objects, expected_sel.manager)
    got = _evaluate(ft, got_sel.objects, got_sel.manager)
    for task in ("yaml_mc", "ft_mc"):
        assert _worst(_scores(expected, task), _scores(got, task)) <= TOL
        assert _metrics(got, task) == _metrics(expected, task)
    assert _scores(got, "ft_gen") == _scores(expected, "ft_gen")
    assert _metrics(got, "ft_gen") == _metrics(expected, "ft_gen") == {"exact_match,none": 0.5}
    assert set(_metrics(got, "ft_mc")) == {"acc,none", "acc_norm,none"}
    assert len({round(x[0], 2) for doc in _scores(got, "ft_mc") for x in doc}) > 30  # distinct scores
    assert _metrics(got, "yaml_mc")["acc,none"] == _metrics(got, "ft_mc")["acc,none"]  # same rows

    # Wrong variant: BOS put in front of every context shifts every score.
    bos = FtLM(str(setup["model"]), device="cpu", dtype="fp32", batch_size=5, add_bos_token=True)
    wrong_sel = _ft_selection(setup)
    wrong = _evaluate(bos, wrong_sel.objects, wrong_sel.manager)
    assert _worst(_scores(expected, "ft_mc"), _scores(wrong, "ft_mc")) > 1.0


@pytest.fixture(scope="module")
def adapter(setup: dict[str, Path]) -> Path:
    torch.manual_seed(5)
    base = LlamaForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    peft_model.save_pretrained(setup["root"] / "adapter")
    return setup["root"] / "adapter"


def test_adapter_through_lm_evals_own_api(setup: dict[str, Path], adapter: Path) -> None:
    """``simple_evaluate(model="ft", model_args="pretrained=...,adapter=...")``, applied and merged."""
    tasks = ["yaml_mc"]
    hf = HFLM(pretrained=str(setup["model"]), peft=str(adapter), device="cpu", dtype="float32", batch_size=4)
    expected = _evaluate(hf, tasks, TaskManager(include_path=str(setup["yaml_dir"]), include_defaults=False))
    runs = {}
    for merge in (False, True):
        out = lm_eval.simple_evaluate(
            model="ft",
            model_args=f"pretrained={setup['model']},adapter={adapter},merge_adapter={merge},dtype=fp32,device=cpu",
            tasks=tasks,
            task_manager=TaskManager(include_path=str(setup["yaml_dir"]), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,
        )
        assert out is not None
        assert out["config"]["model"] == "ft"
        runs[merge] = out
        assert _worst(_scores(expected, "yaml_mc"), _scores(out, "yaml_mc")) <= TOL
        assert _metrics(out, "yaml_mc") == _metrics(expected, "yaml_mc")

    # Wrong variant: the base model without the adapter.
    base = _evaluate(
        FtLM(str(setup["model"]), device="cpu", dtype="fp32"),
        tasks,
        TaskManager(include_path=str(setup["yaml_dir"]), include_defaults=False),
    )
    assert _worst(_scores(expected, "yaml_mc"), _scores(base, "yaml_mc")) > 0.1


def test_run_lm_eval_on_a_model_in_memory(setup: dict[str, Path], tmp_path: Path) -> None:
    """What a training loop calls: the results of ``FtLM`` on the same model, ``results.json`` written,
    the model's training mode restored."""
    model = ft_models.from_pretrained(setup["model"], dtype=torch.float32).train()
    tok = ft_data.load_tokenizer(setup["model"])
    results = run_lm_eval(model, tok, _ft_selection(setup), output_dir=tmp_path / "out", bootstrap_iters=0)
    assert model.training
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert _metrics(written, "ft_mc") == _metrics(results, "ft_mc")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json"]  # no temporary left
    direct_sel = _ft_selection(setup)
    direct = _evaluate(FtLM(model.eval(), tokenizer=tok), direct_sel.objects, direct_sel.manager)
    for task in ("yaml_mc", "ft_mc", "ft_gen"):
        assert _metrics(results, task) == _metrics(direct, task)


def test_local_rows_keep_strings_that_look_like_dates(tmp_path: Path) -> None:
    """The demo's date task: answers such as ``"2034-08-10"`` reach lm-eval as written, so a correct
    generation scores 1 through lm-eval's own ``exact_match``. Wrong variant: the same file read by the
    ``datasets`` JSON builder (``dataset_path: json`` without ft's loader) turns them into timestamps."""
    rows = [
        {"prompt": "Rewrite as YYYY-MM-DD: 10 Aug 2034", "answer": "2034-08-10"},
        {"prompt": "1951-10-25", "answer": "1951-10-25"},
    ]
    data = write_jsonl(tmp_path / "dates.jsonl", rows)
    (task,) = select_tasks([], [LocalTask("dates", str(data))]).objects
    docs = list(task.test_docs())
    assert [dict(d) for d in docs] == rows
    assert [task.doc_to_text(d) for d in docs] == [r["prompt"] for r in rows]
    assert [task.process_results(d, [" " + r["answer"]]) for d, r in zip(docs, rows, strict=True)] == [
        {"exact_match": 1.0}
    ] * 2

    plain = {
        "task": "plain_json",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
    }
    config = {k: v for k, v in task.dump_config().items() if k not in ("task", "custom_dataset")}
    (wrong,) = TaskManager(include_defaults=False).load([{**config, **plain}])["tasks"].values()
    wrong_doc = next(iter(wrong.test_docs()))
    assert str(wrong.doc_to_target(wrong_doc)) != "2034-08-10"
    assert wrong.process_results(wrong_doc, ["2034-08-10"]) == {"exact_match": 0.0}
