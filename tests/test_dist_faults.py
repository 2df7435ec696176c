"""Faults and launches of a real 2-rank `tune run` (gloo on CPU, the tiny model of the distributed tests).

One rank is SIGKILLed after the run logged its fifth step (so checkpoint step_4 is complete): every
process of the job must be gone within ``dist_timeout_s`` + 30 s, the launch exits non-zero with one
``error:`` line naming rank 1 and no traceback; then ``resume=auto`` at the same world size finishes
with final weights byte-identical to an uninterrupted run's. A deliberately wrong variant (a resume
that ignores the loader's saved position) is shown to end with other weights, so the
byte comparison can see a resume that lost its place in the data. With ``--max-restarts 1`` and
``resume=auto``, the same kill ends in torchrun restarting the workers, which finish with the same bytes. Two torchrun launches on localhost
acting as two nodes (static rendezvous, 2 nodes x 1 process, the same FSDP mesh) write the final weights
of one 2-process launch byte for byte; the same two nodes with node 1 on another shuffle seed do not.
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


def _weights(root: Path, out: str) -> bytes:
    return (root / out / "model" / "model.safetensors").read_bytes()


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
    root: Path, out: str, *launch: str
) -> tuple[subprocess.Popen[bytes], list[psutil.Process], float]:
    """Start a 2-rank run into ``out`` (stderr to ``out.err``), SIGKILL rank 1 once step 5 is logged.

    Returns the ``tune`` process (torchrun's agent: ``tune run`` execs it), every process of the job
    and when the kill was sent. Step 5 logged means checkpoint step_4 is complete.
    """
    with (root / f"{out}.err").open("w") as stderr:
        job = subprocess.Popen(
            _command(["--nproc-per-node", "2", *launch], f"output_dir={out}", "resume=auto"),
            cwd=root,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 240
    while _logged_steps(root / out) < 5:
        assert job.poll() is None, (root / f"{out}.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never logged 5 steps"
        time.sleep(0.02)
    processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    ranks = {p.environ().get("RANK"): p for p in processes if p.environ().get("RANK") is not None}
    assert sorted(ranks) == ["0", "1"], [p.cmdline() for p in processes]
    ranks["1"].send_signal(signal.SIGKILL)
    return job, processes, time.monotonic()


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
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "rank 1 of 2" in errors[0], errors
    assert "SIGKILL" in errors[0], errors

    # The wrong variant first, in a copy: a resume that loses its place in the data (the recipe with
    # the loader's saved position ignored) ends with other bytes, so the comparison below can see one.
    shutil.copytree(root / "killed", root / "wrong")
    _run(root, "output_dir=wrong", "resume=auto", recipe="wrong_resume.py")
    assert _weights(root, "wrong") != reference
    # resume=auto continues from the newest complete checkpoint: byte-identical final weights.
    _run(root, "output_dir=killed", "resume=auto")
    assert _weights(root, "killed") == reference


def _two_nodes(root: Path, out: str, *node1: str) -> None:
    """Two torchrun launches on localhost as nodes 0 and 1 (static rendezvous, 1 process each).

    The mesh is given (``dp_shard=2``): by default two nodes of one process would replicate across
    the nodes (HSDP 2 x 1), which reduces in another order than one node's FSDP 1 x 2.
    """
    port = str(_free_port())
    jobs = []
    for node in ("0", "1"):
        launch = ["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", node]
        launch += ["--master-addr", "127.0.0.1", "--master-port", port]
        extra = node1 if node == "1" else ()
        jobs.append(
            subprocess.Popen(
                _command(launch, f"output_dir={out}", "dp_shard=2", "dp_replicate=1", *extra),
                cwd=root,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def test_two_nodes_equal_one_two_process_launch(root: Path, reference: bytes) -> None:
    """2 nodes x 1 process end byte for byte where 1 node x 2 processes ends (the same FSDP mesh)."""
    _two_nodes(root, "nodes")
    assert _weights(root, "nodes") == reference
    whole = root / "whole/model/model.safetensors"
    # Wrong: node 1 with another shuffle seed reads other rows than one launch's rank 1.
    _two_nodes(root, "nodes_wrong", "seed=4")
    assert _max_diff(root / "nodes_wrong/model/model.safetensors", whole) > 100 * TOL


def test_max_restarts_with_resume_auto_finishes_a_killed_job(root: Path, reference: bytes) -> None:
    """torchrun restarts the workers after the kill; resume=auto continues from checkpoint step_4."""
    job, _, _ = _kill_rank_1(root, "restarted", "--max-restarts", "1")
    assert job.wait(timeout=300) == 0, (root / "restarted.err").read_text()[-3000:]
    assert _weights(root, "restarted") == reference
    steps = [json.loads(line)["step"] for line in (root / "restarted/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))  # the steps after step_4 logged once, by the restarted workers
