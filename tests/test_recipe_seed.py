"""Two identical runs of the full recipe save the same RNG state and the same weights.

A checkpoint's per-rank sidecar (``rank_0.pt``) records every global generator (torch, Python,
NumPy); Python and NumPy start from OS entropy, so a recipe that does not seed them saves a state that
differs run to run and a resumed run's draws depend on which run it came from. Two real `tune run`
processes with one seed must write identical sidecars and weights; a third with another seed must
write a different sidecar (the comparison can fail).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipe_support import make_tiny

pytestmark = pytest.mark.slow


def _run(root: Path, out: str, seed: int) -> Path:
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "full_finetune_single_device",
        "--config",
        str(root / "cfg.yaml"),
        f"output_dir={root / out}",
        f"seed={seed}",
    ]
    done = subprocess.run(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return root / out


def _sidecar(out: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        out / "checkpoints" / "step_2" / "rank_0.pt", weights_only=True
    )
    return state


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_identical_full_runs_save_identical_rng_state_and_weights(tmp_path: Path) -> None:
    model_dir, data = make_tiny(tmp_path)
    (tmp_path / "cfg.yaml").write_text(
        "recipe: full_finetune_single_device\n"
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\n"
        "optimizer: {lr: 0.01}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 1}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 48\nmax_steps: 2\n"
    )
    first, second = _run(tmp_path, "a", 5), _run(tmp_path, "b", 5)
    rng_a, rng_b = _sidecar(first), _sidecar(second)
    assert {"torch", "python.words", "numpy.keys"} <= rng_a.keys()
    assert _same(rng_a, rng_b)
    assert _same(
        load_file(first / "model" / "model.safetensors"), load_file(second / "model" / "model.safetensors")
    )

    # Wrong variant: another seed saves another state (every generator the sidecar records differs).
    rng_c = _sidecar(_run(tmp_path, "c", 6))
    for key in ("torch", "python.words", "numpy.keys"):
        assert not torch.equal(rng_a[key], rng_c[key]), key
