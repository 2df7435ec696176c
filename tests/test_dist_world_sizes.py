"""Resume at another world size and two-node launches, through real ``tune run`` launches (gloo on CPU).

One 4-process launch trains HSDP 2 x 2 (``dp_replicate=2``) for 5 steps of a 4-row global batch on 12
rows (3 steps an epoch), with a checkpoint every 2 steps: step_2 stops 8 rows into epoch 0. Against it:

- two ``torchrun`` launches on localhost acting as two nodes of 2 processes (the default mesh of two
  nodes is HSDP 2 x 2, replicas across the nodes, the same rank layout), with static rendezvous and
  with c10d, write its final weights byte for byte; node 1 on another shuffle seed does not;
- resumed from its step_2 on 2 processes (FSDP, ``batch_size=2``: the same global batch) to step 4,
  then from that run's step_4 on 1 process (``batch_size=4``) to step 5: the final weights are within
  fp32 summation order (``TOL``) of the uninterrupted run's, each resume printing one
  ``(saved on N ranks, now M)`` line; a resume that drops the optimizer state ends off by far more;
- the weights right after a load equal the saved ones: a 1-process resume whose ``max_steps`` is the
  saved step exports exactly the 2-process run's export of the same step;
- a 1-process ``batch_size=3`` resume from step_2 (8 rows is not a whole number of 3-row batches) is
  refused with one line naming the keys, and nothing in the saved run changes.

Every torch process costs seconds to start here (4 on 2 cores are slow): the checks share launches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input_support import assert_refused
from safetensors.torch import load_file
from test_dist_faults import _free_port
from test_recipe_support import make_tiny
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.long]

TOL = 1e-5  # weights: fp32 summation order over 5 AdamW steps of lr 0.01 (observed below 1e-6)
OPTIMIZER_TOL = 1e-4  # AdamW's moments, relative to each tensor's largest entry (observed 1.3e-5)
TUNE = str(Path(sys.executable).parent / "tune")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WEIGHTS = "model/model.safetensors"

# The recipe with a resume that loads the weights and drops the optimizer state (AdamW starts afresh).
# DCP fills the optimizer's state in place while loading: it is cleared after the load.
NO_OPTIMIZER = """
import ft_dist

_load = ft_dist.ModelOptimizerState.load_state_dict


def _weights_only(self, state_dict):
    _load(self, state_dict)
    self.optimizer.state.clear()


ft_dist.ModelOptimizerState.load_state_dict = _weights_only

from ft_recipes.full_finetune_single_device import *  # noqa: E402,F403
from ft_recipes.full_finetune_single_device import Config, main, before_run, PROVIDED, FILE_KEYS  # noqa: E402

DISTRIBUTED = True
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("worlds")
    model, data = make_tiny(root)
    rows = data.read_text().splitlines()
    (root / "train12.jsonl").write_text("\n".join(rows + rows[:4]) + "\n")  # 12 rows: 3 steps an epoch
    (root / "run.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {root / 'train12.jsonl'}, use_cache: false}}\n"
        "output_dir: out\noptimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 5}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 1\nmax_seq_len: 128\npacked: false\nshuffle: true\n"
        "gradient_accumulation_steps: 1\nepochs: 10\nmax_steps: 5\nseed: 3\ndist_timeout_s: 60\n"
    )
    (root / "no_optimizer.py").write_text(NO_OPTIMIZER)
    return root


def _command(launch: list[str], *overrides: str, recipe: str = "full_finetune_distributed") -> list[str]:
    return [TUNE, "run", *launch, recipe, "--config", "run.yaml", *overrides]


def _tune(root: Path, *overrides: str, nproc: int = 1, recipe: str = "full_finetune_distributed") -> str:
    """A one-node launch of ``nproc`` processes (one process: no torchrun); returns its stderr."""
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = _command(launch, *overrides, recipe=recipe)
    done = subprocess.run(cmd, cwd=root, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _two_nodes(root: Path, out: str, rendezvous: str, *node1: str) -> None:
    """Two torchrun launches on localhost as two nodes of 2 processes, rendezvous ``static`` or ``c10d``."""
    port = str(_free_port())
    jobs = []
    for node in ("0", "1"):
        launch = ["--nproc-per-node", "2", "--nnodes", "2"]
        if rendezvous == "static":
            launch += ["--node-rank", node, "--master-addr", "127.0.0.1", "--master-port", port]
        else:
            launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", out]
        extra = node1 if node == "1" else ()
        jobs.append(
            subprocess.Popen(
                _command(launch, f"output_dir={out}", *extra),
                cwd=root,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for job in jobs:
            _, err = job.communicate(timeout=300)
            assert job.returncode == 0, err[-3000:]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait(timeout=30)


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def _optimizer_state(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The optimizer state a checkpoint holds, read by DCP's own converter (whatever its world size):
    ``{"{parameter}.{exp_avg|exp_avg_sq|step}": tensor}``."""
    dcp_to_torch_save(checkpoint, scratch)
    state = torch.load(scratch, weights_only=True)["train"]["optim"]["state"]
    return {f"{name}.{key}": value for name, entry in state.items() for key, value in entry.items()}


def _relative_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest difference of two states, each tensor's relative to that tensor's largest value."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


def _resumed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[full] resumed from")]


@pytest.fixture(scope="module")
def hsdp(root: Path) -> Path:
    """The uninterrupted 4-process HSDP 2 x 2 run (checkpoints step_2, step_4, step_5)."""
    _tune(root, "output_dir=hsdp", "dp_replicate=2", nproc=4)
    assert sorted(p.name for p in (root / "hsdp/checkpoints").iterdir()) == ["step_2", "step_4", "step_5"]
    return root / "hsdp"


def test_two_nodes_static_and_c10d_equal_one_four_process_launch(root: Path, hsdp: Path) -> None:
    reference = (hsdp / WEIGHTS).read_bytes()
    _two_nodes(root, "static", "static")
    assert (root / "static" / WEIGHTS).read_bytes() == reference
    _two_nodes(root, "c10d", "c10d")
    assert (root / "c10d" / WEIGHTS).read_bytes() == reference
    # Wrong: node 1 on another shuffle seed reads other rows than the 4-process launch's ranks 2 and 3.
    _two_nodes(root, "nodes_wrong", "static", "seed=4")
    assert _max_diff(root / "nodes_wrong" / WEIGHTS, hsdp / WEIGHTS) > 100 * TOL


def test_resume_four_to_two_to_one_process(root: Path, hsdp: Path) -> None:
    # 4 (HSDP 2 x 2) -> 2 (FSDP): from step_2 to step 4, the same global batch of 4 rows.
    err = _tune(
        root,
        "output_dir=two",
        f"resume={hsdp / 'checkpoints/step_2'}",
        "batch_size=2",
        "max_steps=4",
        nproc=2,
    )
    assert _resumed_lines(err) == [
        f"[full] resumed from {hsdp / 'checkpoints/step_2'} at step 2 (saved on 4 ranks, now 2)"
    ]
    step_4 = root / "two/checkpoints/step_4"
    # 2 -> 1: from the 2-process run's step_4 (4 rows into epoch 1) to step 5.
    err = _tune(root, "output_dir=one", f"resume={step_4}", "batch_size=4")
    assert _resumed_lines(err) == [f"[full] resumed from {step_4} at step 4 (saved on 2 ranks, now 1)"]
    assert _max_diff(root / "one" / WEIGHTS, hsdp / WEIGHTS) < TOL
    # AdamW's moments went on from the saved ones: its state at step 5 is the uninterrupted run's.
    reference = _optimizer_state(hsdp / "checkpoints/step_5", root / "reference.pt")
    assert (
        _relative_diff(_optimizer_state(root / "one/checkpoints/step_5", root / "one.pt"), reference)
        < OPTIMIZER_TOL
    )
    # Wrong: the same 2 -> 1 resume with the optimizer state dropped (AdamW's moments start afresh).
    _tune(root, "output_dir=fresh_adam", f"resume={step_4}", "batch_size=4", recipe="no_optimizer.py")
    assert _max_diff(root / "fresh_adam" / WEIGHTS, hsdp / WEIGHTS) > 100 * TOL
    fresh = _optimizer_state(root / "fresh_adam/checkpoints/step_5", root / "fresh.pt")
    assert _relative_diff(fresh, reference) > 100 * OPTIMIZER_TOL
    # Right after the load: 1 process resumed from step_4 with max_steps=4 takes no step and exports
    # exactly what the 2 ranks that saved step_4 exported at the end of their run.
    _tune(root, "output_dir=loaded", f"resume={step_4}", "batch_size=4", "max_steps=4")
    assert (root / "loaded" / WEIGHTS).read_bytes() == (root / "two" / WEIGHTS).read_bytes()


def test_position_not_a_whole_number_of_new_global_batches_is_refused(root: Path, hsdp: Path) -> None:
    """step_2 stopped 8 rows into epoch 0: batches of 3 rows cannot continue that order."""
    step_2 = hsdp / "checkpoints/step_2"
    assert_refused(
        "run",
        "full_finetune_distributed",
        "--config",
        "run.yaml",
        "output_dir=odd",
        f"resume={step_2}",
        "batch_size=3",
        cwd=root,
        names=["batch_size=3", "gradient_accumulation_steps=1", "8 rows"],
        watch=[step_2],
    )
