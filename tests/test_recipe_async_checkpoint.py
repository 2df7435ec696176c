"""``checkpoint.async_save`` through real ``tune run`` processes (one process, CPU).

A run whose checkpoints are written in the background saves the same state as a run whose saves block:
the checkpoints hold equal tensors and values, the exported model is byte-identical, and a resume from
an asynchronously written checkpoint ends with the same bytes. A background write that fails (a real
OS error: the process's file-size limit, ``RLIMIT_FSIZE``, is below the checkpoint's size) stops the
run with one ``error:`` line at the next wait, leaving no ``step_N`` or temporary directory behind and
the last complete checkpoint untouched.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_support import make_tiny
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("async_ckpt")
    model, data = make_tiny(root)
    (root / "cfg.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\noptimizer: {lr: 0.01}\nlr_schedule: {kind: cosine, warmup_steps: 1}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 3}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 64\npacked: false\nshuffle: true\n"
        "gradient_accumulation_steps: 1\nepochs: 4\nmax_steps: 4\nseed: 7\n"
    )
    return root


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _tune(
    root: Path, out: str, *overrides: str, max_file: int | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(Path(sys.executable).parent / "tune"), "run", "full_finetune_single_device"]
    return subprocess.run(
        [*cmd, "--config", str(root / "cfg.yaml"), f"output_dir={out}", *overrides],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(max_file) if max_file is not None else None,
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list | tuple):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def _checkpoint(path: Path, tmp: Path) -> dict[str, Any]:
    """Everything a checkpoint holds (the DCP state converted to one torch.save file, plus the rank's
    RNG sidecar), flattened to key -> tensor or value."""
    target = tmp / f"{path.parent.parent.name}_{path.name}.pt"
    dcp_to_torch_save(path, target)
    state = torch.load(target, weights_only=False)
    state["rng"] = torch.load(path / "rank_0.pt")
    return _flat(state)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y):
            return False
    return True


@pytest.fixture(scope="module")
def blocking(root: Path) -> Path:
    done = _tune(root, "sync")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "sync"


def test_async_saves_hold_the_blocking_saves_state_and_resume_to_the_same_bytes(
    root: Path, blocking: Path, tmp_path: Path
) -> None:
    done = _tune(root, "async", "checkpoint.async_save=true")
    assert done.returncode == 0, done.stderr[-3000:]
    ckpts = root / "async/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_2", "step_4"]  # both published, no temp dir
    for step in ("step_2", "step_4"):
        assert _same(
            _checkpoint(ckpts / step, tmp_path), _checkpoint(blocking / "checkpoints" / step, tmp_path)
        )
    # The comparison sees a checkpoint of another step (the state the loop moved on to) as different.
    assert not _same(
        _checkpoint(ckpts / "step_2", tmp_path), _checkpoint(blocking / "checkpoints/step_4", tmp_path)
    )
    model = (blocking / "model/model.safetensors").read_bytes()
    assert (root / "async/model/model.safetensors").read_bytes() == model

    # Resume from the asynchronously written step_2: the same final bytes as the uninterrupted runs.
    shutil.rmtree(ckpts / "step_4")
    shutil.rmtree(root / "async/model")
    resumed = _tune(root, "async", "checkpoint.async_save=true", "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert (root / "async/model/model.safetensors").read_bytes() == model


def test_a_failed_background_write_is_one_line_and_keeps_the_last_checkpoint(
    root: Path, blocking: Path
) -> None:
    out = root / "failing"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(blocking / "checkpoints/step_2", out / "checkpoints/step_2")
    kept = {p: p.read_bytes() for p in sorted((out / "checkpoints").rglob("*")) if p.is_file()}
    # The checkpoint's tensors (tens of MB) exceed the limit; the rank's small RNG sidecar, written
    # before the background write starts, and the run's logs do not.
    done = _tune(
        root,
        "failing",
        "checkpoint.async_save=true",
        "checkpoint.every_n_steps=1",
        "resume=auto",
        max_file=2**20,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # The write of step 3's tensors failed in the background (torch's writer meets the short write).
    assert f"{out.name}/checkpoints/step_3: saving failed" in errors[0], errors[0]
    assert "the last complete checkpoint failing/checkpoints/step_2 is kept" in errors[0], errors[0]
    # Nothing half-written: no step_3 (nor its temporary directory), no exported model; step_2 unchanged.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]
    assert {p: p.read_bytes() for p in sorted((out / "checkpoints").rglob("*")) if p.is_file()} == kept
    assert not (out / "model").exists()
