"""Recipe-level faults through real `tune run` subprocesses: one line on stderr, a non-zero exit, nothing
good overwritten.

A full fine-tuning run leaves a step-2 checkpoint and its final model. Copies of that output directory
then meet: a checkpoint with its data file deleted, a checkpoint with its data file truncated (both:
exit 2 naming the checkpoint, every file of the directory byte-identical afterwards); a full disk while
the step-4 checkpoint is written, made real with RLIMIT_FSIZE in the child (the kernel refuses the
write with EFBIG; CPython ignores SIGXFSZ, so the write raises; torch's zip writer then reports a
short write): exit 1 naming the step-2 checkpoint
as kept, no temp directory left, and a rerun without the limit resumes from step 2 and finishes.
Datasets with no trained token are refused before training: chat rows without an assistant turn
(ft-data names the row) and a dataset component whose loss mask hides every label (the recipe names it).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipe_support import make_tiny

pytestmark = pytest.mark.slow  # several `tune run` processes (torch start-up each)

MASKED = '''"""Test component: a dataset whose loss mask hides every label (a user's own dataset code)."""
import dataclasses

import ft_data


def build(source, tokenizer, max_seq_len, use_cache=False):
    ds = ft_data.build_dataset(source, tokenizer=tokenizer, max_seq_len=max_seq_len, use_cache=use_cache)
    ds.fields["labels"] = [[-100] * len(x) for x in ds.fields["labels"]]
    ds.report = dataclasses.replace(ds.report, trained_tokens=0)
    return ds
'''


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run (checkpoint step_2 and model/) to copy; its directory holds the config."""
    root = tmp_path_factory.mktemp("faults")
    model_dir, data = make_tiny(root)
    (root / "masked.py").write_text(MASKED)
    (root / "cfg.yaml").write_text(
        "recipe: full_finetune_single_device\n"
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\ndevice: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nepochs: 10\n"
        "optimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\ncheckpoint: {every_n_steps: 2, keep_last: 2}\n"
    )
    done = _tune(root, root / "base", "max_steps=2")
    assert done.returncode == 0, done.stderr
    return root


def _tune(
    root: Path, out: Path, *overrides: str, fsize: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:  # runs in the child before exec: every file it writes is capped at `fsize` bytes
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    tune = str(Path(sys.executable).parent / "tune")
    return subprocess.run(
        [
            tune,
            "run",
            "full_finetune_single_device",
            "--config",
            str(root / "cfg.yaml"),
            f"output_dir={out}",
            *overrides,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )


def _snapshot(out: Path) -> dict[str, str]:
    """Every file under ``out`` except the resolved config `tune run` rewrites: path -> sha256."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "config.yaml"
    }


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def _copy(base: Path, name: str) -> Path:
    out = base / name
    shutil.copytree(base / "base", out)
    return out


def test_resume_from_a_checkpoint_with_a_missing_file(base: Path) -> None:
    out = _copy(base, "missing")
    (out / "checkpoints" / "step_2" / "__0_0.distcp").unlink()
    before = _snapshot(out)
    failed = _tune(base, out, "max_steps=4", "resume=auto")
    assert failed.returncode == 2, failed.stderr
    line = _one_line_error(failed.stderr)
    assert line.startswith(f"error: resume: {out / 'checkpoints' / 'step_2'}: loading failed"), line
    assert "__0_0.distcp" in line, line
    assert _snapshot(out) == before


def test_resume_from_a_truncated_checkpoint(base: Path) -> None:
    out = _copy(base, "truncated")
    data = out / "checkpoints" / "step_2" / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    before = _snapshot(out)
    failed = _tune(base, out, "max_steps=4", "resume=auto")
    assert failed.returncode == 2, failed.stderr
    line = _one_line_error(failed.stderr)
    assert line.startswith(f"error: resume: {out / 'checkpoints' / 'step_2'}: loading failed"), line
    assert _snapshot(out) == before


def test_disk_full_while_saving_keeps_the_previous_checkpoint(base: Path) -> None:
    out = _copy(base, "disk_full")
    step_2 = _snapshot(out / "checkpoints" / "step_2")
    assert (out / "checkpoints" / "step_2" / "__0_0.distcp").stat().st_size > 2**20  # over the limit
    failed = _tune(base, out, "max_steps=4", "resume=auto", fsize=2**20)
    assert failed.returncode == 1, failed.stderr
    line = _one_line_error(failed.stderr)
    assert line.startswith(f"error: checkpoint: {out / 'checkpoints' / 'step_4'}: saving failed"), line
    assert line.endswith(f"the last complete checkpoint {out / 'checkpoints' / 'step_2'} is kept"), line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]  # no temp dir, no step_4
    assert _snapshot(out / "checkpoints" / "step_2") == step_2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 3 and 4 trained; step 4 was not saved

    again = _tune(base, out, "max_steps=4", "resume=auto")
    assert again.returncode == 0, again.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in again.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_datasets_without_a_trained_token_are_refused(base: Path, tmp_path: Path) -> None:
    rows = tmp_path / "no_assistant.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    failed = _tune(base, tmp_path / "a", f"dataset.source={rows}")
    assert failed.returncode == 2, failed.stderr
    line = _one_line_error(failed.stderr)
    assert "row 1" in line, line
    assert "no trainable token" in line, line

    failed = _tune(base, tmp_path / "b", "dataset=masked.build")
    assert failed.returncode == 2, failed.stderr
    line = _one_line_error(failed.stderr)
    assert line.startswith("error: dataset: "), line
    assert "no trained token in its 8 examples" in line, line
    assert not (tmp_path / "b" / "checkpoints").exists()
