"""Exact resume after SIGKILL: real `tune run` subprocesses killed at chosen points, then `resume=auto`.

The run trains LoRA with dropout 0.1 on shuffled, packed rows whose trained-token counts differ, with
two micro-batches per step, batches collated in a worker process, checkpoints every 2 steps and one
thread. The fault comes from a model component beside the config (`killer.py`: the real
`ft_models.from_pretrained`, plus a SIGKILL the test asks for through an environment variable): in the
first micro-batch of step 4's window (after the step-2 checkpoint), or in the middle of writing the
step-4 checkpoint. The resumed run must end with adapter weights bit-identical to an uninterrupted
run's; a resume that does not restore the RNG state (dropout masks) is shown to differ.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipe_support import make_tiny

import ft_data
import ft_dist

pytestmark = pytest.mark.slow

KILLER = '''"""Test component: ft_models.from_pretrained plus a SIGKILL injected where FT_TEST_KILL says."""
import os
import signal

import ft_models


def from_pretrained(path, **kwargs):
    model = ft_models.from_pretrained(path, **kwargs)
    how = os.environ.get("FT_TEST_KILL", "")
    if how.startswith("forward:"):  # kill at the n-th model call (micro-batch)
        n, calls = int(how.split(":")[1]), [0]

        def hook(module, args):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)

        model.register_forward_pre_hook(hook)
    elif how.startswith("fsync:"):  # kill when a file under a path containing the marker is synced
        marker, real = how.split(":", 1)[1], os.fsync

        def fsync(fd):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if marker in target:
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd)

        os.fsync = fsync
    return model
'''


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    model_dir, _ = make_tiny(root)
    rows = []
    for i in range(24):
        words = " ".join([f"w{j % 7}" for j in range(2 + (i * 5) % 23)])
        rows.append(
            {"messages": [{"role": "user", "content": f"item {i}"}, {"role": "assistant", "content": words}]}
        )
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "killer.py").write_text(KILLER)
    (root / "cfg.yaml").write_text(
        "recipe: lora_finetune_single_device\n"
        f"model: {{_component_: killer.from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_dataset, source: {root / 'data.jsonl'}, use_cache: false}}\n"
        "output_dir: out\n"
        "lora: {target_modules: [q_proj, v_proj, up_proj], rank: 4, alpha: 8, dropout: 0.1}\n"
        "optimizer: {lr: 0.02, weight_decay: 0.01}\n"
        "lr_schedule: {kind: cosine, warmup_steps: 2}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 2}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 48\npacked: true\nshuffle: true\n"
        "num_workers: 1\ngradient_accumulation_steps: 2\nepochs: 20\nmax_steps: 7\nseed: 3\n"
    )
    return root


def _tune(
    root: Path, out: Path, *overrides: str, kill: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FT_TEST_KILL": kill or ""}
    cmd = [
        str(Path(sys.executable).parent / "tune"),
        "run",
        "lora_finetune_single_device",
        "--config",
        str(root / "cfg.yaml"),
    ]
    return subprocess.run(
        [*cmd, f"output_dir={out}", *overrides], env=env, capture_output=True, text=True, timeout=300
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(setup_files: Path) -> dict[str, torch.Tensor]:
    out = setup_files / "uninterrupted"
    done = _tune(setup_files, out)
    assert done.returncode == 0, done.stderr
    windows = [
        json.loads(line)["trained_tokens"] for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(windows) == 7
    # The micro-batches the run reads (same dataset, loader and seed) carry unequal trained-token counts.
    tok = ft_data.load_tokenizer(setup_files / "model")
    ds = ft_data.build_dataset(setup_files / "data.jsonl", tokenizer=tok, max_seq_len=48, use_cache=False)
    loader = ft_data.Loader(ds, batch_size=2, max_seq_len=48, seed=3)
    batches = itertools.chain.from_iterable(iter(loader) for _ in range(20))  # epoch after epoch
    counts = [int((b["labels"] != -100).sum()) for b in itertools.islice(batches, 14)]
    assert [a + b for a, b in zip(counts[::2], counts[1::2], strict=True)] == windows
    assert max(counts) >= 1.5 * min(counts), counts
    return _adapter(out)


def test_sigkill_inside_an_accumulation_window_resumes_bit_identically(
    setup_files: Path, reference: dict[str, torch.Tensor]
) -> None:
    out = setup_files / "killed_in_window"
    killed = _tune(setup_files, out, kill="forward:7")  # step 4's first micro-batch (2 calls per step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ft_dist.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step_2"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # step 3 ran, was not checkpointed

    refused = _tune(setup_files, out)
    assert refused.returncode == 2
    assert "not empty" in refused.stderr

    resumed = _tune(setup_files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert _equal(_adapter(out), reference)


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(
    setup_files: Path, reference: dict[str, torch.Tensor]
) -> None:
    out = setup_files / "killed_in_save"
    killed = _tune(setup_files, out, kill="fsync:.tmp-step_4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "checkpoints" / ".tmp-step_4").is_dir()  # the half-written one
    assert ft_dist.latest_checkpoint(out / "checkpoints") == out / "checkpoints" / "step_2"

    resumed = _tune(setup_files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert _equal(_adapter(out), reference)
    assert not (out / "checkpoints" / ".tmp-step_4").exists()


def test_resume_without_the_rng_state_differs(setup_files: Path, reference: dict[str, torch.Tensor]) -> None:
    """Wrong variant: the same resume with the checkpoint's RNG sidecar removed (dropout masks differ)."""
    out = setup_files / "no_rng"
    killed = _tune(setup_files, out, kill="forward:7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (out / "checkpoints" / "step_2" / "rank_0.pt").unlink()
    resumed = _tune(setup_files, out, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert not _equal(_adapter(out), reference)
