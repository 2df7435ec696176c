"""Two gloo processes save one checkpoint; one process loads it (each rank's RNG kept in its sidecar).

Both ranks also save with ``keep_last``: rank 0 alone prunes, and when its prune fails every rank raises.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_support import Tiny, loss_of

import ft_dist

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _full_disk(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _read_only(path: object, *args: object, **kwargs: object) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", str(path))


def _worker(rank: int, world: int, root: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    real_fsync = os.fsync
    try:
        torch.manual_seed(0)  # same weights on both ranks (replicated)
        model = Tiny()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss_of(model, torch.randint(0, 37, (2, 7))).backward()
        for p in model.parameters():  # data-parallel: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        torch.manual_seed(100 + rank)  # then each rank's generator diverges
        torch.rand(rank + 1)
        state = ft_dist.rng_state()
        ft_dist.save_checkpoint(
            f"{root}/out", 1, app_state={"train": ft_dist.ModelOptimizerState(model, opt)}, rank_state=state
        )
        torch.save({"rng": state["torch"], "weights": model.state_dict()}, f"{root}/expected_{rank}.pt")
        if rank == 1:  # fault injection: this rank's disk is full for the next save
            os.fsync = _full_disk  # type: ignore[assignment]
        try:
            ft_dist.save_checkpoint(
                f"{root}/out", 2, app_state={"train": ft_dist.ModelOptimizerState(model, opt)}
            )
            outcome = "saved"
        except ft_dist.CheckpointError as e:
            outcome = str(e)
        Path(f"{root}/outcome_{rank}.txt").write_text(outcome)
        os.fsync = real_fsync
        for step in (1, 2, 3):
            ft_dist.save_checkpoint(
                f"{root}/pruned", step, app_state={"train": ft_dist.ModelOptimizerState(model)}, keep_last=2
            )
        if rank == 0:  # fault injection: rank 0 cannot delete the checkpoint it prunes
            shutil.rmtree = _read_only  # type: ignore[assignment]
        try:
            ft_dist.save_checkpoint(
                f"{root}/pruned", 4, app_state={"train": ft_dist.ModelOptimizerState(model)}, keep_last=2
            )
            outcome = "pruned"
        except ft_dist.CheckpointError as e:
            outcome = str(e)
        Path(f"{root}/prune_outcome_{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_two_ranks_save_one_process_loads(tmp_path: Path) -> None:
    context = mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):  # a rank stuck in a collective would hang here: bound it
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("ranks did not finish: a failed save left a rank waiting")
    # The failed second save raised on both ranks and left no trace.
    outcomes = [(tmp_path / f"outcome_{r}.txt").read_text() for r in range(2)]
    assert all(o.startswith(f"{tmp_path}/out/step_2: saving failed") for o in outcomes), outcomes
    assert "No space left on device" in outcomes[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["step_1"]
    # Rank 0's failed prune raised on both ranks; step_4 stands, step_2 was moved out of the way.
    pruned = [(tmp_path / f"prune_outcome_{r}.txt").read_text() for r in range(2)]
    assert all(o.startswith(f"{tmp_path}/pruned: step_4 saved, pruning failed") for o in pruned), pruned
    assert "PermissionError" in pruned[0]
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == [".del-step_2", "step_3", "step_4"]
    ft_dist.clean_checkpoints(tmp_path / "pruned", keep_last=2)
    assert sorted(p.name for p in (tmp_path / "pruned").iterdir()) == ["step_3", "step_4"]
    assert json.loads((tmp_path / "pruned" / "step_4" / ft_dist.MARKER).read_text())["world_size"] == 2
    ckpt = ft_dist.latest_checkpoint(tmp_path / "out")
    assert ckpt == tmp_path / "out" / "step_1"
    assert json.loads((ckpt / ft_dist.MARKER).read_text())["world_size"] == 2
    expected = [torch.load(tmp_path / f"expected_{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(expected[0]["rng"], expected[1]["rng"])

    torch.manual_seed(9)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mine = ft_dist.load_checkpoint(ckpt, app_state={"train": ft_dist.ModelOptimizerState(model, opt)})
    for key, value in expected[0]["weights"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert mine is not None
    assert torch.equal(mine["torch"], expected[0]["rng"])
    other = ft_dist.read_rank_state(ckpt, 1)
    assert other is not None
    assert torch.equal(other["torch"], expected[1]["rng"])
    assert len(opt.state) == len(list(model.parameters()))
