"""``full_dpo_distributed`` in one process, through its own setup and the one loop, on a tiny model.

The two reference modes compute the same run: ``live`` (a frozen copy built through the policy's setup
path) and ``precomputed`` (the policy's own log-probs once before the first step) both start at the
reference (first-step sigmoid loss = ln 2, rewards 0) and end with the same weights within fp32
tolerance, on the training and the validation pairs. The frozen copy never changes while the policy trains, and is frozen in the policy's storage
dtypes. Wrong variant: a table recomputed from trained weights (what a resume that recomputed it would
use) starts away from ln 2 and ends elsewhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dpo_support import make_tiny_dpo

from ft_recipes import full_dpo_distributed as recipe
from ft_recipes import steps
from ft_recipes.errors import CheckpointLoadError
from ft_recipes.runner import prepare


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny_dpo(tmp_path_factory.mktemp("full_dpo"))


def _setup(files: tuple[Path, Path], out: Path, *overrides: str) -> recipe.Run:
    model_dir, pairs = files
    path = out.parent / f"{out.name}.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {pairs}, use_cache: false}}\n"
        f"output_dir: {out}\n"
        "dpo: {loss_type: [sigmoid], beta: 0.2}\noptimizer: {lr: 0.002}\nlr_schedule: {kind: constant}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nshuffle: true\nnum_workers: 0\n"
        "epochs: 2\nmax_steps: 3\nseed: 7\n"
        f"validation: {{dataset: {{_component_: build_preference_dataset, source: {pairs}, use_cache: false}}, "
        "every_n_steps: 3}\n"
    )
    return recipe.setup(prepare(recipe, str(path), overrides).config)


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(run: recipe.Run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _starts_at_the_reference(out: Path) -> None:
    first = _records(out)[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6, first["loss"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == 0.0, (key, first[key])


def test_live_and_precomputed_reference_train_the_same_model(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = _setup(files, tmp_path / "live", "dpo.reference=live")
    frozen = live.reference.__closure__[0].cell_contents  # the frozen copy inside frozen_reference
    assert frozen is not live.model
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in live.model.parameters())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    start = _weights(live)
    assert _max_diff(before, start) == 0.0  # the same starting weights
    recipe.train(live)
    _starts_at_the_reference(tmp_path / "live")
    # The validation figures of the starting point print first: the policy is the reference.
    printed = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("[val] before training:")
    ]
    assert printed == [
        "[val] before training: loss 0.6931, reward accuracy 0.000, margin 0.0000 over 6 pairs"
    ]
    assert _max_diff(before, frozen.state_dict()) == 0.0  # the frozen copy never changed
    trained = _weights(live)
    assert _max_diff(trained, start) > 1e-3  # while the policy trained

    pre = _setup(files, tmp_path / "pre", "dpo.reference=precomputed")
    assert "reference" in pre.state
    assert pre.state["reference"]["train"].shape == (6, 2)
    recipe.train(pre)
    _starts_at_the_reference(tmp_path / "pre")
    assert _max_diff(_weights(pre), trained) < 1e-6
    ours, theirs = _records(tmp_path / "pre"), _records(tmp_path / "live")
    for a, b in zip(ours, theirs, strict=True):
        keys = ["loss", "rewards/chosen", "rewards/margins", "logps/chosen", "grad_norm"]
        for key in keys + ["val_loss", "val_rewards/margins"] * (a["step"] == 3):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])

    # Wrong variant: the table recomputed from the trained policy (a resume that recomputed it).
    wrong = _setup(files, tmp_path / "wrong", "dpo.reference=precomputed", "~validation")
    table = steps.precompute_reference(steps.policy_reference(live.model), wrong.loader, wrong.device, 2)
    assert (table - pre.state["reference"]["train"]).abs().max() > 1e-2
    wrong.reference = steps.table_reference(table)
    recipe.train(wrong)
    assert abs(_records(tmp_path / "wrong")[0]["loss"] - math.log(2)) > 1e-3
    assert _max_diff(_weights(wrong), trained) > 100 * 1e-6

    # A precomputed resume needs the tables of the weights before step 1: refused before anything loads
    # from a live run's checkpoint, and from one without the validation table when the run validates.
    for out, names in (("live", "no precomputed reference log-probs"), ("wrong", "validation pairs")):
        resume = f"resume={tmp_path / out / 'checkpoints/step_3'}"
        cfg = prepare(
            recipe, str(tmp_path / "pre.yaml"), [resume, "max_steps=4", "dpo.reference=precomputed"]
        ).config
        with pytest.raises(CheckpointLoadError, match=names):
            recipe.check_reference(cfg)
    cfg = prepare(
        recipe,
        str(tmp_path / "pre.yaml"),
        [f"resume={tmp_path / 'pre/checkpoints/step_3'}", "dpo.reference=precomputed"],
    ).config
    recipe.check_reference(cfg)  # the precomputed run's own checkpoint holds both tables


def test_frozen_copy_takes_the_policys_frozen_storage_dtype(files: tuple[Path, Path], tmp_path: Path) -> None:
    """bf16-mixed: the policy keeps fp32 master weights, the frozen copy (never trained) is stored in the
    compute dtype, like any frozen weight of the policy."""
    run = _setup(files, tmp_path / "bf16", "dpo.reference=live", "precision=bf16-mixed")
    frozen = run.reference.__closure__[0].cell_contents
    assert {p.dtype for p in run.model.parameters()} == {run.policy.master_dtype} == {torch.float32}
    assert {p.dtype for p in frozen.parameters()} == {run.policy.frozen_dtype} == {torch.bfloat16}


@pytest.mark.parametrize("kernel_fix", [True, False], ids=["training_kernel", "wrong_per_call_kernel"])
def test_bf16_cpu_reference_runs_the_policys_attention_kernel(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_fix: bool
) -> None:
    """On a CPU in bf16, ``attention: auto`` runs the grouped products for calls with gradients and SDPA
    without: the gradient-free reference must still compute the policy's numbers (step 0 at ln 2). The
    wrong variant leaves the per-call choice, and the first step's rewards are not 0."""
    if not kernel_fix:
        monkeypatch.setattr("ft_recipes._preference_steps.training_kernel_everywhere", lambda *models: None)
    out = tmp_path / ("fixed" if kernel_fix else "wrong")
    run = _setup(
        files, out, "dpo.reference=precomputed", "precision=bf16-mixed", "attention=auto", "max_steps=1"
    )
    recipe.train(run)
    first = _records(out)[0]
    if kernel_fix:
        _starts_at_the_reference(out)
    else:
        assert abs(first["rewards/margins"]) > 1e-4, first
