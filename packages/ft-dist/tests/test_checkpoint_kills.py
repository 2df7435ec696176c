"""Real SIGKILLs at every point of a save and a prune, then ``clean_checkpoints``: what remains is exact.

A subprocess saves step 1 and step 2 (``keep_last=2``), then a third save: step 3 (a new step, which
prunes step 1) or step 2 again (a replacement). The test wraps the file-system calls the save and prune
make (``Path.rename``, ``shutil.rmtree``, ``torch.save``) in that subprocess so that it SIGKILLs itself
just before or after the chosen one; production code has no hook. Every state a kill leaves has only
complete, marked ``step_N`` directories; after cleanup the root holds exactly the expected checkpoints,
each loading the weights it was saved with, and the user's files beside them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_support import Tiny

import ft_dist

pytestmark = pytest.mark.slow

SCRIPT = r"""
import fnmatch, os, pathlib, shutil, signal, sys
import torch
import ft_dist
from dist_support import Tiny

root, mode, point = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
kind, _, pattern = point.partition(":")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def save(step, value, armed=False):
    model = Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    global ARMED
    ARMED = armed
    ft_dist.save_checkpoint(
        root, step, app_state={"train": ft_dist.ModelOptimizerState(model)}, keep_last=2,
        rank_state={"x": torch.ones(1)},
    )


ARMED = False
real_rename, real_rmtree, real_save = pathlib.Path.rename, shutil.rmtree, torch.save


def rename(self, target):
    move = f"{self.name}->{pathlib.Path(target).name}"
    if ARMED and kind == "before-rename" and fnmatch.fnmatch(move, pattern):
        die()
    out = real_rename(self, target)
    if ARMED and kind == "after-rename" and fnmatch.fnmatch(move, pattern):
        die()
    return out


def rmtree(path, *args, **kwargs):
    path = pathlib.Path(path)
    if ARMED and kind == "mid-rmtree" and fnmatch.fnmatch(path.name, pattern):
        victim = next(p for p in sorted(path.iterdir()) if p.name.endswith(".distcp"))
        victim.unlink()  # part of the directory is gone, then the process dies
        die()
    return real_rmtree(path, *args, **kwargs)


def torch_save(obj, f, *args, **kwargs):
    if ARMED and kind == "in-write":
        die()
    return real_save(obj, f, *args, **kwargs)


pathlib.Path.rename, shutil.rmtree, torch.save = rename, rmtree, torch_save
save(1, 1.0)
save(2, 2.0)
if mode == "new":
    save(3, 3.0, armed=True)
else:
    save(2, 20.0, armed=True)
print("not killed")
"""

# (mode, kill point, names left by the kill, {checkpoint: weight value} after cleanup)
CASES = [
    ("new", "in-write", [".tmp-step_3", "step_1", "step_2"], {"step_1": 1.0, "step_2": 2.0}),
    (
        "new",
        "before-rename:.tmp-step_3->step_3",
        [".tmp-step_3", "step_1", "step_2"],
        {"step_1": 1.0, "step_2": 2.0},
    ),
    (
        "new",
        "after-rename:.tmp-step_3->step_3",
        ["step_1", "step_2", "step_3"],
        {"step_2": 2.0, "step_3": 3.0},
    ),
    (
        "new",
        "after-rename:step_1->.del-step_1",
        [".del-step_1", "step_2", "step_3"],
        {"step_2": 2.0, "step_3": 3.0},
    ),
    ("new", "mid-rmtree:.del-step_1", [".del-step_1", "step_2", "step_3"], {"step_2": 2.0, "step_3": 3.0}),
    ("replace", "in-write", [".tmp-step_2", "step_1", "step_2"], {"step_1": 1.0, "step_2": 2.0}),
    (
        "replace",
        "after-rename:step_2->.step_2.old-*",
        [".step_2.old-*", ".tmp-step_2", "step_1"],
        {"step_1": 1.0, "step_2": 2.0},
    ),
    (
        "replace",
        "after-rename:.tmp-step_2->step_2",
        [".step_2.old-*", "step_1", "step_2"],
        {"step_1": 1.0, "step_2": 20.0},
    ),
    (
        "replace",
        "mid-rmtree:.step_2.old-*",
        [".step_2.old-*", "step_1", "step_2"],
        {"step_1": 1.0, "step_2": 20.0},
    ),
]
USER = ["notes", "step_7"]


def _run_saver(tmp_path: Path, root: Path, mode: str, point: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "saver.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, str(script), str(root), mode, point]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _names(root: Path) -> list[str]:
    return sorted(
        f".step_{p.name.split('_')[1].split('.')[0]}.old-*" if ".old-" in p.name else p.name
        for p in root.iterdir()
    )


def _value(checkpoint: Path) -> float:
    model = Tiny()
    ft_dist.load_checkpoint(checkpoint, app_state={"train": ft_dist.ModelOptimizerState(model)})
    values = {float(p.detach().flatten()[0]) for p in model.parameters()}
    assert len(values) == 1, values
    return values.pop()


@pytest.mark.parametrize(("mode", "point", "left", "after"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_kill_then_clean(
    tmp_path: Path, mode: str, point: str, left: list[str], after: dict[str, float]
) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "notes").mkdir()
    (root / "step_7").mkdir()  # a user's directory with a checkpoint-like name, no marker
    (root / "step_7" / "notes.txt").write_text("mine")
    done = _run_saver(tmp_path, root, mode, point)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert _names(root) == sorted([*left, *USER])
    # Whatever the kill left, every step_N that exists is complete and marked, or the user's.
    for child in root.glob("step_*"):
        assert child.name == "step_7" or ft_dist.is_checkpoint(child), child

    ft_dist.clean_checkpoints(root, keep_last=2)
    assert _names(root) == sorted([*after, *USER])
    assert {name: _value(root / name) for name in after} == after
    assert (root / "step_7" / "notes.txt").read_text() == "mine"


def test_the_script_runs_to_the_end_without_a_kill_point(tmp_path: Path) -> None:
    """Control: unarmed, the same script finishes, and only the newest two checkpoints remain."""
    root = tmp_path / "checkpoints"
    done = _run_saver(tmp_path, root, "new", "none:")
    assert done.returncode == 0, done.stderr
    assert "not killed" in done.stdout
    assert _names(root) == ["step_2", "step_3"]
    assert _value(root / "step_3") == 3.0
    assert torch.equal(ft_dist.read_rank_state(root / "step_3", 0)["x"], torch.ones(1))  # type: ignore[index]
