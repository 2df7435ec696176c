"""fp16 (with a gradient scaler) and bf16-pure through the real recipes on a tiny Llama, on CPU.

fp16: the full recipe trains 4 steps with checkpoints every 2; the loss decreases; the step-2 checkpoint
holds the scaler's state (scale and growth tracker, which is not a fresh scaler's), and a run resumed
from it starts with exactly that state and ends with the same weights as the uninterrupted run. A fresh
scaler is shown to fail the restored-state check. bf16-pure: every parameter and every AdamW moment in
the saved checkpoint is bf16 (read from the checkpoint's own metadata); the bf16-mixed checkpoint of
the same run is shown to fail that check (fp32 master weights and moments).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from test_recipe_support import make_tiny

from ft_recipes import full_finetune_single_device as full
from ft_recipes.runner import prepare, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("precision"))


def _config(out: Path, model_dir: Path, data: Path, precision: str) -> str:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"output_dir: {out}\n"
        f"device: cpu\nprecision: {precision}\nbatch_size: 2\nmax_seq_len: 96\nepochs: 3\n"
        "optimizer: {lr: 0.005}\nlr_schedule: {kind: constant}\ncheckpoint: {every_n_steps: 2, keep_last: 3}\n"
    )
    return str(path)


def _scaler_in(checkpoint: Path) -> dict[str, Any]:
    template: dict[str, Any] = {"scale": 0.0, "growth_factor": 0.0, "backoff_factor": 0.0,
                                "growth_interval": 0, "_growth_tracker": -1}  # fmt: skip
    dcp.load({"scaler": template}, checkpoint_id=str(checkpoint), no_dist=True)
    return template


def test_fp16_trains_and_resumes_with_its_scaler_state(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    out = tmp_path / "fp16"
    run(prepare(full, _config(out, model_dir, data, "fp16"), ["max_steps=4"]))
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses

    saved = _scaler_in(out / "checkpoints" / "step_2")
    fresh = torch.amp.GradScaler("cpu").state_dict()
    assert saved.keys() == fresh.keys()
    assert saved != fresh  # two steps moved it (growth tracker, or the scale after an overflow)

    # Resume from step 2 in a copy whose later checkpoints are gone; the scaler starts where it was saved.
    resumed_out = tmp_path / "fp16_resumed"
    shutil.copytree(out, resumed_out)
    shutil.rmtree(resumed_out / "checkpoints" / "step_4")
    shutil.rmtree(resumed_out / "model")
    cfg = prepare(full, _config(resumed_out, model_dir, data, "fp16"), ["max_steps=4", "resume=auto"]).config
    resumed = full.setup(cfg)
    assert resumed.counters["step"] == 2
    restored = resumed.scaler.state_dict()
    assert restored == saved
    assert fresh != saved  # wrong variant: a scaler that was not restored fails the same check
    full.train(resumed)
    full.save(resumed)
    a, b = (
        load_file(out / "model" / "model.safetensors"),
        load_file(resumed_out / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _dtypes(checkpoint: Path) -> dict[str, torch.dtype]:
    """Saved dtype of every weight and AdamW moment, from the checkpoint's metadata."""
    meta = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    return {
        key: item.properties.dtype
        for key, item in meta.state_dict_metadata.items()
        if key.startswith("train.model.") or key.endswith((".exp_avg", ".exp_avg_sq"))
    }


@pytest.mark.parametrize("precision", ["bf16-pure", "bf16-mixed"])
def test_bf16_pure_checkpoint_holds_bf16_weights_and_moments(
    tiny: tuple[Path, Path], tmp_path: Path, precision: str
) -> None:
    model_dir, data = tiny
    out = tmp_path / precision
    run(prepare(full, _config(out, model_dir, data, precision), ["max_steps=1"]))
    dtypes = _dtypes(out / "checkpoints" / "step_1")
    weights = [k for k in dtypes if k.startswith("train.model.")]
    moments = [k for k in dtypes if k.endswith((".exp_avg", ".exp_avg_sq"))]
    assert "train.model.lm_head.weight" in weights  # tied to embed_tokens: one parameter, one pair of moments
    assert len(weights) > 10
    assert len(moments) == 2 * (len(weights) - 1)
    all_bf16 = all(d == torch.bfloat16 for d in dtypes.values())
    assert all_bf16 == (precision == "bf16-pure"), {d for d in dtypes.values()}
    if precision == "bf16-mixed":
        assert all(d == torch.float32 for d in dtypes.values())  # fp32 master weights and moments
