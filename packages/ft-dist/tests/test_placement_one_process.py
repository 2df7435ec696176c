"""Placed parameters, gathering, rank-0-led tasks and asynchronous checkpoints, in one process.

Across two ranks these pieces are exercised by the distributed recipe tests (slow).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_support import CausalTiny, Tiny, loss_of
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate

import ft_dist


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    rendezvous = Path(tmp_path_factory.mktemp("pg")) / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _placed(reference: nn.Module, mesh: DeviceMesh, *, tied: bool) -> CausalTiny:
    """A model built on meta whose parameters are filled by shard_tensor, as a streaming loader does."""
    with torch.device("meta"):
        model = CausalTiny(tied=tied)
    whole = dict(reference.named_parameters(remove_duplicate=False))
    for name, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                full = whole[f"{name}.{key}" if name else key]
                module._parameters[key] = nn.Parameter(ft_dist.shard_tensor(full, mesh))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_placed_parameters_are_adopted_as_the_shards(mesh: DeviceMesh, tied: bool) -> None:
    torch.manual_seed(0)
    reference = CausalTiny(tied=tied)
    whole = ft_dist.shard_model(copy.deepcopy(reference), mesh)
    placed = _placed(reference, mesh, tied=tied)
    before = {id(p) for p in placed.parameters()}
    ft_dist.shard_model(placed, mesh)
    assert {id(p) for p in placed.parameters()} == before  # adopted, not replaced
    assert [n for n, _ in placed.named_parameters()] == [n for n, _ in whole.named_parameters()]
    if tied:
        assert placed.lm_head.weight is placed.model.embed_tokens.weight
    ids = torch.randint(0, 37, (3, 8))
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (whole, placed)]
    for step in range(2):
        for model, opt in zip((whole, placed), optimizers, strict=True):
            torch.manual_seed(step)  # the same dropout masks
            loss_of(model, ids).backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(whole.named_parameters(), placed.parameters(), strict=True):
        assert isinstance(q, DTensor)
        torch.testing.assert_close(q.full_tensor(), p.full_tensor(), rtol=0, atol=0, msg=name)
    # The steps moved the weights: the comparison could see a difference.
    assert not torch.equal(whole.lm_head.weight.full_tensor(), reference.lm_head.weight)


def test_placed_parameters_on_another_layout_or_beside_whole_ones_are_refused(mesh: DeviceMesh) -> None:
    torch.manual_seed(0)
    reference = CausalTiny()
    mixed = _placed(reference, mesh, tied=False)
    mixed.lm_head.weight = nn.Parameter(reference.lm_head.weight.detach().clone())
    with pytest.raises(ft_dist.ShardingError, match=r"Linear\.weight is a plain tensor while other"):
        ft_dist.shard_model(mixed, mesh)
    replicated = _placed(reference, mesh, tied=False)
    w = replicated.lm_head.weight
    replicated.lm_head.weight = nn.Parameter(
        DTensor.from_local(w.to_local(), mesh, [Replicate()], run_check=False)
    )
    with pytest.raises(ft_dist.ShardingError, match=r"placed as \(Replicate\(\),\) on another layout"):
        ft_dist.shard_model(replicated, mesh)


def test_shard_tensor_and_gathered(mesh: DeviceMesh) -> None:
    t = torch.randn(5, 3)
    placed = ft_dist.shard_tensor(t, mesh)
    assert tuple(placed.placements) == ft_dist.shard_placements(mesh)
    assert torch.equal(placed.to_local(), t)  # one rank holds all of it
    torch.manual_seed(0)
    model = ft_dist.shard_model(CausalTiny(tied=True), mesh)
    sharded = model.lm_head.weight
    with ft_dist.gathered(model.lm_head) as head:
        assert head is model.lm_head
        assert type(head.weight) is nn.Parameter
        assert not head.weight.requires_grad
        assert torch.equal(head.weight, sharded.full_tensor())
    assert model.lm_head.weight is sharded  # put back
    plain = Tiny()
    with ft_dist.gathered(plain):  # nothing sharded: nothing changes
        assert all(type(p) is nn.Parameter for p in plain.parameters())


def test_led_by_rank0_in_one_process_runs_the_lead() -> None:
    calls: list[int] = []
    tasks = [lambda i=i: calls.append(i) or i * 10 for i in range(4)]
    assert ft_dist.led_by_rank0(tasks, lambda run: [run(3), run(0)]) == [30, 0]
    assert calls == [3, 0]


@pytest.mark.parametrize("grouped", [False, True], ids=["no_group", "one_rank_group"])
def test_async_checkpoint_publishes_only_when_finished_and_holds_the_state_it_was_given(
    tmp_path: Path, grouped: bool, request: pytest.FixtureRequest
) -> None:
    if grouped:
        request.getfixturevalue("mesh")
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 37, (2, 7))
    loss_of(model, ids).backward()
    opt.step()
    counters = {"step": 1}
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    pending = ft_dist.save_checkpoint_async(
        tmp_path,
        1,
        app_state={"train": ft_dist.ModelOptimizerState(model, opt), "counters": counters},
        rank_state={"r": torch.tensor([7])},
        keep_last=1,
    )
    # Training goes on at once; the checkpoint is not published before done()/wait() says so.
    assert not (tmp_path / "step_1").exists()
    assert ft_dist.latest_checkpoint(tmp_path) is None
    counters["step"] = 2
    loss_of(model, ids).backward()
    opt.step()
    assert pending.wait() == tmp_path / "step_1" == pending.path
    assert pending.done()
    assert ft_dist.latest_checkpoint(tmp_path) == tmp_path / "step_1"
    assert ft_dist.checkpoint_info(tmp_path / "step_1") == {
        "format": 1,
        "step": 1,
        "world_size": 1,
        "keep_last": 1,
    }
    fresh = Tiny()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    loaded_counters = {"step": 0}
    side = ft_dist.load_checkpoint(
        tmp_path / "step_1",
        app_state={"train": ft_dist.ModelOptimizerState(fresh, fresh_opt), "counters": loaded_counters},
    )
    assert loaded_counters == {"step": 1}  # the value at save time, not the loop's later one
    assert side is not None
    assert torch.equal(side["r"], torch.tensor([7]))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert not torch.equal(model.head.weight, saved["head.weight"])  # the model did move on
    # The next save of the same root prunes the first (keep_last=1) only once it is published.
    second = ft_dist.save_checkpoint_async(
        tmp_path, 2, app_state={"train": ft_dist.ModelOptimizerState(model, opt)}, keep_last=1
    )
    while not second.done():
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2"]
