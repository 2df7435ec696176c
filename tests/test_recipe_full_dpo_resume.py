"""Exact resume of a ``full_dpo_distributed`` run with a precomputed reference after SIGKILL: real
`tune run` subprocesses.

The reference log-probs are computed once, from the weights before the first step, and kept in every
checkpoint. A model component beside the config (``killer.py``) SIGKILLs the run inside step 3's window,
after the step-2 checkpoint; the resumed run reads the table back from that checkpoint and ends with
the weights and metrics of an uninterrupted run, bit for bit. Wrong variant: the same resume with the
table recomputed from the (by then trained) weights differs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dpo_support import make_tiny_dpo
from safetensors.torch import load_file

import ft_dist

pytestmark = pytest.mark.slow

KILLER = '''"""Test component: ft_models.from_pretrained plus a SIGKILL at the n-th model call (FT_TEST_KILL)."""
import os
import signal

import ft_models


def from_pretrained(path, **kwargs):
    model = ft_models.from_pretrained(path, **kwargs)
    n, calls = int(os.environ.get("FT_TEST_KILL") or 0), [0]

    def hook(module, args):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(hook)
    return model
'''

# The resume the wrong way: the table recomputed from the weights the checkpoint holds.
RECOMPUTE = """
import ft_recipes.full_dpo_distributed as recipe
from ft_recipes.full_dpo_distributed import *  # noqa: F403
from ft_recipes.full_dpo_distributed import Config, main, PROVIDED, FILE_KEYS  # noqa: F401

_tables = recipe.reference_tables


def _recompute(run):
    step, run.counters["step"] = run.counters["step"], 0
    try:
        return _tables(run)
    finally:
        run.counters["step"] = step


recipe.reference_tables = _recompute
DISTRIBUTED = True
"""

# 18 pairs in batches of 2: 9 forwards precompute the table, then one per micro-batch, two per step.
KILL_IN_STEP_3 = 9 + 2 * 2 + 1


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full_dpo_resume")
    model_dir, pairs = make_tiny_dpo(root)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    more = [{**r, "prompt": f"{r['prompt']} (variant {k})"} for k in range(2) for r in rows]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + more))  # 18 pairs
    (root / "killer.py").write_text(KILLER)
    (root / "recompute.py").write_text(RECOMPUTE)
    (root / "cfg.yaml").write_text(
        "recipe: full_dpo_distributed\n"
        f"model: {{_component_: killer.from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {root / 'pairs.jsonl'}, use_cache: false}}\n"
        "output_dir: out\n"
        "dpo: {loss_type: [sigmoid, ipo], loss_weights: [1.0, 0.1], beta: 0.2, reference: precomputed}\n"
        "optimizer: {lr: 0.002, weight_decay: 0.01}\n"
        "lr_schedule: {kind: cosine, warmup_steps: 1}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 2}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nshuffle: true\n"
        "num_workers: 1\ngradient_accumulation_steps: 2\nepochs: 10\nmax_steps: 5\nseed: 5\n"
    )
    return root


def _tune(
    root: Path, out: Path, *overrides: str, kill: int = 0, recipe: str = "full_dpo_distributed"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_KILL": str(kill)}
    cmd = [str(Path(sys.executable).parent / "tune"), "run", recipe, "--config", str(root / "cfg.yaml")]
    return subprocess.run(
        [*cmd, f"output_dir={out}", *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_resume_reads_the_table_back_and_ends_bit_identically(files: Path) -> None:
    uninterrupted = files / "uninterrupted"
    done = _tune(files, uninterrupted)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precomputed for 18 pairs" in done.stderr
    records = _records(uninterrupted)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["rewards/margins"] == 0.0  # step 1 starts at the reference

    out = files / "killed"
    killed = _tune(files, out, kill=KILL_IN_STEP_3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert ft_dist.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step_2"
    shutil.copytree(out, files / "recomputed")
    resumed = _tune(files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "reference log-probs read from" in resumed.stderr
    assert "precomputed for" not in resumed.stderr
    ours, theirs = _weights(out), _weights(uninterrupted)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    keys = ["loss", "rewards/chosen", "rewards/margins", "logps/rejected", "grad_norm"]
    assert [[r[k] for k in keys] for r in _records(out)] == [[r[k] for k in keys] for r in records]

    # Wrong variant: the resume recomputes the table from the step-2 weights.
    wrong = _tune(files, files / "recomputed", "resume=auto", recipe=str(files / "recompute.py"))
    assert wrong.returncode == 0, wrong.stderr[-3000:]
    assert "precomputed for 18 pairs" in wrong.stderr
    theirs_after = [r["loss"] for r in records[2:]]
    wrong_after = [r["loss"] for r in _records(files / "recomputed")[2:]]
    assert max(abs(a - b) for a, b in zip(wrong_after, theirs_after, strict=True)) > 1e-3
    recomputed = _weights(files / "recomputed")
    assert max(float((recomputed[k] - theirs[k]).abs().max()) for k in theirs) > 1e-4
