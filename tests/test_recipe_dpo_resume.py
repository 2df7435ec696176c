"""Exact resume of a DPO run after SIGKILL: real `tune run lora_dpo_single_device` subprocesses.

The run trains a LoRA adapter (dropout 0.1, so the RNG state matters) on shuffled pairs of different
lengths, two micro-batches per step, batches collated in a worker process, checkpoints every 2 steps,
the reference computed live (adapters disabled: two model calls per micro-batch). A model component
beside the config (``killer.py``) SIGKILLs the process at a chosen model call: inside step 3's window,
after the step-2 checkpoint. The resumed run must end with the adapter of an uninterrupted run, bit for
bit, and with the same metrics for the steps it re-ran; a resume without the checkpoint's RNG state
(dropout masks differ) is shown to differ. The precomputed reference is checked to train the same run.
"""

from __future__ import annotations

import json
import os
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
    how = os.environ.get("FT_TEST_KILL", "")
    if how.startswith("forward:"):
        n, calls = int(how.split(":")[1]), [0]

        def hook(module, args):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(hook)
    return model
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dpo_resume")
    model_dir, pairs = make_tiny_dpo(root)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    more = [{**r, "prompt": f"{r['prompt']} (variant {k})"} for k in range(2) for r in rows]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + more))  # 18 pairs
    (root / "killer.py").write_text(KILLER)
    (root / "cfg.yaml").write_text(
        "recipe: lora_dpo_single_device\n"
        f"model: {{_component_: killer.from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {root / 'pairs.jsonl'}, use_cache: false}}\n"
        "output_dir: out\n"
        "lora: {target_modules: [q_proj, v_proj, up_proj], rank: 4, alpha: 8, dropout: 0.1}\n"
        "dpo: {loss_type: [sigmoid, ipo], loss_weights: [1.0, 0.1], beta: 0.2}\n"
        "optimizer: {lr: 0.02, weight_decay: 0.01}\n"
        "lr_schedule: {kind: cosine, warmup_steps: 1}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 2}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nshuffle: true\n"
        "num_workers: 1\ngradient_accumulation_steps: 2\nepochs: 10\nmax_steps: 5\nseed: 5\n"
    )
    return root


def _tune(
    root: Path, out: Path, *overrides: str, kill: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_KILL": kill or ""}
    cmd = [str(Path(sys.executable).parent / "tune"), "run", "lora_dpo_single_device", "--config"]
    return subprocess.run(
        [*cmd, str(root / "cfg.yaml"), f"output_dir={out}", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(files: Path) -> Path:
    out = files / "uninterrupted"
    done = _tune(files, out)
    assert done.returncode == 0, done.stderr
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["pairs"] == 4 for r in records)
    assert records[0]["rewards/margins"] == 0.0  # step 1 starts at the reference (B = 0)
    assert any(r["rewards/margins"] != 0.0 for r in records[1:])
    return out


def test_sigkill_inside_a_window_resumes_bit_identically(files: Path, uninterrupted: Path) -> None:
    out = files / "killed"
    killed = _tune(files, out, kill="forward:10")  # step 3, first micro-batch (4 calls per step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ft_dist.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step_2"
    resumed = _tune(files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert _equal(_adapter(out), _adapter(uninterrupted))
    ours, theirs = _records(out), _records(uninterrupted)
    keys = ["loss", "rewards/chosen", "rewards/accuracies", "logps/rejected", "logits/chosen", "grad_norm"]
    assert [[r[k] for k in keys] for r in ours] == [[r[k] for k in keys] for r in theirs]


def test_resume_without_the_rng_state_differs(files: Path, uninterrupted: Path) -> None:
    """Wrong variant: the same resume with the checkpoint's RNG sidecar removed (dropout masks differ)."""
    out = files / "no_rng"
    killed = _tune(files, out, kill="forward:10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (out / "checkpoints" / "step_2" / "rank_0.pt").unlink()
    resumed = _tune(files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert not _equal(_adapter(out), _adapter(uninterrupted))


def test_precomputed_reference_trains_the_same_run(files: Path, uninterrupted: Path) -> None:
    out = files / "precomputed"
    done = _tune(files, out, "dpo.reference=precomputed")
    assert done.returncode == 0, done.stderr
    assert "precomputed for 18 pairs" in done.stderr
    ours, theirs = _records(out), _records(uninterrupted)
    for a, b in zip(ours, theirs, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/chosen"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])
    mine, live = _adapter(out), _adapter(uninterrupted)
    assert max(float((mine[k] - live[k]).abs().max()) for k in live) < 1e-4
