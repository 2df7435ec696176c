"""Faults and launches of a real 2-rank `tune run` (gloo on CPU, the tiny model of the distributed tests).

One rank is SIGKILLed after the run logged its fifth step (so checkpoint step_4 is complete): every
process of the job must be gone within ``dist_timeout_s`` + 30 s, the launch exits non-zero with one
``error:`` line naming rank 1 and no traceback; then ``resume=auto`` at the same world size finishes
with final weights byte-identical to an uninterrupted run's. A deliberately wrong variant (a resume
that ignores the loader's saved position) is shown to end with other weights, so the byte comparison
can see a resume that lost its place in the data; a copy of the killed run resumed on 1 process (batch
2: the same global batch) ends within fp32 tolerance (``RESIZED_TOL``) of it, where the wrong resume
does not. With ``--max-restarts 1`` and ``resume=auto``, the same kill ends in torchrun restarting the
workers, which finish with the same bytes. The error line stands on its own line also when the agent,
not rank 0's own error path, ends rank 0 mid progress bar (rank 0 paused until the agent's SIGTERM
waits on it). (Two nodes of 2 processes each: ``test_dist_world_sizes``.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file
from test_recipe_support import make_tiny

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TOL = 1e-5
# 1 process vs 2 ranks over the ~20 AdamW steps (lr 0.01) after the resume: fp32 summation order,
# amplified where Adam divides small gradients by their own size (observed 8.3e-5; the wrong resume 0.26).
RESIZED_TOL = 5e-4
TIMEOUT_S = 20  # the run's dist_timeout_s
TUNE = str(Path(sys.executable).parent / "tune")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The distributed recipe with a resume that restarts the data from the beginning.
WRONG_RESUME = """
import ft_data

ft_data.Loader.load_state_dict = lambda self, state: None

from ft_recipes.full_finetune_single_device import *  # noqa: E402,F403
from ft_recipes.full_finetune_single_device import Config, main, before_run, PROVIDED, FILE_KEYS  # noqa: E402

DISTRIBUTED = True
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    model, data = make_tiny(root)
    # 8 rows, 2 ranks x batch 1: 4 steps an epoch; 24 steps take ~6 s, time to kill a rank mid-run.
    (root / "run.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\noptimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 2}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 1\nmax_seq_len: 128\npacked: false\nshuffle: true\n"
        f"gradient_accumulation_steps: 1\nepochs: 100\nmax_steps: 24\nseed: 3\ndist_timeout_s: {TIMEOUT_S}\n"
    )
    (root / "wrong_resume.py").write_text(WRONG_RESUME)
    return root


def _command(launch: list[str], *overrides: str, recipe: str = "full_finetune_distributed") -> list[str]:
    return [TUNE, "run", *launch, recipe, "--config", "run.yaml", *overrides]


def _run(
    root: Path,
    *overrides: str,
    launch: tuple[str, ...] = ("--nproc-per-node", "2"),
    recipe: str = "full_finetune_distributed",
) -> None:
    cmd = _command(list(launch), *overrides, recipe=recipe)
    done = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


WEIGHTS = "model/model.safetensors"


def _weights(root: Path, out: str) -> bytes:
    return (root / out / WEIGHTS).read_bytes()


def _logged_steps(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def reference(root: Path) -> bytes:
    """The final weights of an uninterrupted 2-process launch."""
    _run(root, "output_dir=whole")
    return _weights(root, "whole")


def _kill_rank_1(
    root: Path, out: str, *launch: str, stop_rank_0: bool = False, launcher: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], list[psutil.Process], float]:
    """Start a 2-rank run into ``out`` (stderr to ``out.err``), SIGKILL rank 1 once step 5 is logged.

    Returns the ``tune`` process (torchrun's agent: ``tune run`` execs it), every process of the job
    and when the kill was sent. Step 5 logged means checkpoint step_4 is complete. ``stop_rank_0``:
    rank 0 is paused (SIGSTOP) before the kill and let go once the agent's SIGTERM waits on it, so the
    agent, not rank 0's own error path, ends rank 0. ``launcher``: run the job with this command line
    in place of ``tune run --nproc-per-node 2`` (torchrun's arguments follow it).
    """
    overrides = (f"output_dir={out}", "resume=auto")
    if launcher is None:
        command, env = _command(["--nproc-per-node", "2", *launch], *overrides), ENV
    else:  # what ``tune run`` execs (``ft_tune.cli._torchrun``)
        recipe = ["full_finetune_distributed", "--config", "run.yaml", *overrides]
        command = [*launcher, "--nproc-per-node", "2", *launch, "-m", "ft_tune.cli", "run", *recipe]
        env = {**ENV, "FT_TUNE_WORKER": "1"}
    with (root / f"{out}.err").open("w") as stderr:
        job = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 240
    while _logged_steps(root / out) < 5:
        assert job.poll() is None, (root / f"{out}.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never logged 5 steps"
        time.sleep(0.02)
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    ranks = {p.environ().get("RANK"): p for p in processes if p.environ().get("RANK") is not None}
    assert sorted(ranks) == ["0", "1"], [p.cmdline() for p in processes]
    if stop_rank_0:
        ranks["0"].send_signal(signal.SIGSTOP)
    ranks["1"].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    if stop_rank_0:
        while not _pending(ranks["0"].pid, signal.SIGTERM):
            assert time.monotonic() < killed_at + 60, "the agent never sent rank 0 SIGTERM"
            time.sleep(0.02)
        ranks["0"].send_signal(signal.SIGCONT)
    return job, processes, killed_at


def _pending(pid: int, sig: signal.Signals) -> bool:
    """Whether ``sig`` waits undelivered on process ``pid`` (Linux's /proc status masks)."""
    masks = [
        line.split()[1]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith(("SigPnd:", "ShdPnd:"))
    ]
    return any(int(mask, 16) >> (sig - 1) & 1 for mask in masks)


def test_killed_rank_ends_the_job_and_resume_is_bit_exact(root: Path, reference: bytes) -> None:
    job, processes, killed_at = _kill_rank_1(root, "killed")
    bound = TIMEOUT_S + 30
    code = job.wait(timeout=bound)
    _, alive = psutil.wait_procs(processes, timeout=max(0.0, bound - (time.monotonic() - killed_at)))
    elapsed = time.monotonic() - killed_at
    assert not alive, f"orphans: {[p.pid for p in alive]}"
    assert elapsed < bound, elapsed
    assert code != 0
    assert _logged_steps(root / "killed") < 24, "the run finished before the kill"
    assert not (root / "killed/model").exists()  # no rank went on to write the final model
    err = (root / "killed.err").read_text()
    assert "Traceback" not in err, err[-3000:]
    errors = _error_lines(err)
    # one line, on a line of its own: the agent may stop rank 0 before it sees the failure, with its
    # progress bar mid-line, or rank 0 may meet the failure first and close the bar on its way out
    assert len(errors) == 1, err[-3000:]
    assert err.count("error:") == 1, err[-3000:]
    assert "rank 1 of 2" in errors[0], errors
    assert "SIGKILL" in errors[0], errors

    # The wrong variant first, in a copy: a resume that loses its place in the data (the recipe with
    # the loader's saved position ignored) ends with other bytes, so the comparison below can see one.
    shutil.copytree(root / "killed", root / "wrong")
    shutil.copytree(root / "killed", root / "killed_one")
    _run(root, "output_dir=wrong", "resume=auto", recipe="wrong_resume.py")
    assert _weights(root, "wrong") != reference
    # Another copy resumed at another world size: 1 process reading batches of 2 (the same global
    # batch) ends within fp32 summation order of the 2-rank run; the wrong resume is far off.
    _run(root, "output_dir=killed_one", "resume=auto", "batch_size=2", launch=())
    whole = root / "whole" / WEIGHTS
    assert _max_diff(root / "killed_one" / WEIGHTS, whole) < RESIZED_TOL
    assert _max_diff(root / "wrong" / WEIGHTS, whole) > 100 * RESIZED_TOL
    # resume=auto continues from the newest complete checkpoint: byte-identical final weights.
    _run(root, "output_dir=killed", "resume=auto")
    assert _weights(root, "killed") == reference


# The launcher with its error line printed as it was before it started the line on a new one.
GLUED_LAUNCHER = """
import sys

import ft_recipes._launcher as launcher

launcher.print = lambda *a, **k: print(*(x.lstrip("\\n") for x in a), **k)
sys.exit(launcher.main())
"""


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads pending signals from /proc")
def test_a_rank_0_stopped_by_the_agent_leaves_its_bar_and_the_error_on_separate_lines(root: Path) -> None:
    """Rank 0 ended by the agent's SIGTERM mid-bar (not by its own error path): the line still stands alone.

    The wrong variant, the launcher printing without starting a new line, glues the error to the bar.
    """
    (root / "glued_launcher.py").write_text(GLUED_LAUNCHER)
    for out, launcher in [("stopped", None), ("glued", [sys.executable, "glued_launcher.py"])]:
        job, _, _ = _kill_rank_1(root, out, stop_rank_0=True, launcher=launcher)
        assert job.wait(timeout=TIMEOUT_S + 30) == 1
        err = (root / f"{out}.err").read_text()
        assert "step/s" in err.split("error:")[0].splitlines()[-1], err[-3000:]  # the bar, mid-line
        assert err.count("error:") == 1, err[-3000:]
        errors = _error_lines(err)
        if launcher is None:
            assert len(errors) == 1, err[-3000:]
            assert "rank 1 of 2" in errors[0], errors
            assert "SIGKILL" in errors[0], errors
        else:
            assert errors == [], err[-3000:]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def test_max_restarts_with_resume_auto_finishes_a_killed_job(root: Path, reference: bytes) -> None:
    """torchrun restarts the workers after the kill; resume=auto continues from checkpoint step_4."""
    job, _, _ = _kill_rank_1(root, "restarted", "--max-restarts", "1")
    assert job.wait(timeout=300) == 0, (root / "restarted.err").read_text()[-3000:]
    assert _weights(root, "restarted") == reference
    steps = [json.loads(line)["step"] for line in (root / "restarted/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # the steps after step_4 logged once, by the restarted workers
