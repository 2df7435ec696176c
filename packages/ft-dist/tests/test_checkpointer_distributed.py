"""Two gloo processes save one checkpoint; one process loads it (each rank's RNG kept in its sidecar)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_support import Tiny, loss_of

import ft_dist

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _worker(rank: int, world: int, root: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
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
    finally:
        dist.destroy_process_group()


def test_two_ranks_save_one_process_loads(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
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
