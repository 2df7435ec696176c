"""The training recipes end to end through `tune run`'s path (prepare + run): what a run leaves behind.

LoRA: the PEFT adapter loads with PEFT over the base it names, the merged directory loads in
transformers with the same logits, the metrics log and the resolved config are written, old checkpoints
are pruned, a second run into the same directory is refused. Full: the HF directory loads in
transformers with its tokenizer and chat template. A diverging run stops with a clear error and keeps
its last good checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer

from ft_recipes.errors import UserError
from ft_recipes.runner import prepare, run
from ft_recipes.training import TrainingDivergedError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("outputs"))


def _config(tmp_path: Path, model_dir: Path, data: Path) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\n"
        "optimizer: {lr: 0.05}\nlr_schedule: {kind: cosine, warmup_steps: 1}\n"
    )
    return str(path)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(input_ids=ids).logits  # type: ignore[no-any-return]


def test_lora_run_writes_adapter_merged_model_metrics(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    cfg = _config(tmp_path, model_dir, data)
    overrides = ["max_steps=3", "merge=true", "checkpoint.every_n_steps=1", "checkpoint.keep_last=2"]
    run(prepare("lora_finetune_single_device", cfg, overrides))
    out = tmp_path / "out"
    assert (out / "config.yaml").read_text().count("merge: true") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["lr"] == 0.0
    assert records[1]["lr"] == pytest.approx(0.05)
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_mib"] > 0 and r["loss"] > 0 for r in records)
    # Setup's peak is read once, before the loop's peak starts (the same figure in every record).
    assert len({r["setup_peak_memory_mib"] for r in records}) == 1
    assert records[0]["setup_peak_memory_mib"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3"]

    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(model_dir.resolve())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    base_logits = _logits(base)
    tuned = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    assert torch.allclose(_logits(tuned), _logits(merged), atol=1e-4)
    assert not torch.allclose(base_logits, _logits(merged), atol=1e-3)  # the adapter learned something
    assert AutoTokenizer.from_pretrained(out / "merged").chat_template

    before = (out / "config.yaml").read_text()
    with pytest.raises(UserError, match="not empty"):
        run(prepare("lora_finetune_single_device", cfg, ["max_steps=1"]))
    assert (out / "config.yaml").read_text() == before  # refused before anything was written


def test_full_run_writes_an_hf_directory(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    run(prepare("full_finetune_single_device", _config(tmp_path, model_dir, data), ["max_steps=2"]))
    out = tmp_path / "out" / "model"
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert not torch.allclose(_logits(tuned), _logits(base), atol=1e-3)
    tok, ref_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(model_dir)
    assert tok.chat_template == ref_tok.chat_template
    assert tok("a 12 b")["input_ids"] == ref_tok("a 12 b")["input_ids"]


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    overrides = [
        "max_steps=3",
        "checkpoint.every_n_steps=1",
        "optimizer.name=sgd",
        "optimizer.lr=1e30",
        "lr_schedule.warmup_steps=0",
    ]
    with pytest.raises(
        TrainingDivergedError, match=r"step 2: (loss|gradient norm) is (nan|inf).*last good checkpoint"
    ):
        run(prepare("full_finetune_single_device", _config(tmp_path, model_dir, data), overrides))
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step_1"]
    assert not (tmp_path / "out" / "model").exists()


def test_tokenizer_larger_than_the_embedding_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    small = tmp_path / "small"
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf.resize_token_embeddings(1000)  # fewer rows than the tokenizer's ids
    hf.save_pretrained(small)
    cfg = _config(tmp_path, small, data)
    with pytest.raises(
        UserError, match=r"tokenizer: its largest id \d+ is not below the model's 1000 embedding rows"
    ):
        run(prepare("full_finetune_single_device", cfg, [f"tokenizer.path={model_dir}"]))
    assert not (tmp_path / "out" / "model").exists()
