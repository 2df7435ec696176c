"""shard_model's units and refusals, and clip_grad_norm_ on plain tensors, in one process.

A one-rank gloo group is enough to build a mesh and shard; the numerics across ranks are tested with
four processes in the top-level tests/test_dist_sharding.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_support import CausalTiny, Tiny
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule

import ft_dist


def test_output_group_untied_tied_and_absent() -> None:
    untied = CausalTiny()
    assert ft_dist.output_group(untied) == [untied.model.norm, untied.lm_head]
    tied = CausalTiny(tied=True)
    assert ft_dist.output_group(tied) == [tied.model.norm, tied.lm_head, tied.model.embed_tokens]
    assert ft_dist.output_group(Tiny()) == []  # no norm / lm_head: the head stays in the root unit


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceMesh]:
    rendezvous = Path(tmp_path_factory.mktemp("pg")) / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_units_and_one_rank_numerics(mesh: DeviceMesh, tied: bool) -> None:
    torch.manual_seed(0)
    plain = CausalTiny(tied=tied).eval()
    sharded = ft_dist.shard_model(copy.deepcopy(plain), mesh)
    units = [name for name, m in sharded.named_modules() if isinstance(m, FSDPModule)]
    grouped = ["model.embed_tokens"] if tied else []
    assert units == [
        "",
        *grouped,
        "model.layers.0",
        "model.layers.1",
        "model.layers.2",
        "model.norm",
        "lm_head",
    ]
    assert all(type(p).__name__ == "DTensor" for p in sharded.parameters())
    assert list(sharded.state_dict()) == list(plain.state_dict())
    if tied:  # still one parameter
        assert sharded.lm_head.weight is sharded.model.embed_tokens.weight
    assert ft_dist.is_sharded(sharded)
    assert not ft_dist.is_sharded(plain)
    ids = torch.randint(0, 37, (2, 9))
    for model in (plain, sharded):
        model(ids).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), sharded.parameters(), strict=True):
        torch.testing.assert_close(q.grad.full_tensor(), p.grad, rtol=0, atol=0, msg=name)


def test_refusals(mesh: DeviceMesh) -> None:
    with pytest.raises(ft_dist.ShardingError) as info:
        ft_dist.shard_model(CausalTiny(), mesh, offload=True)
    assert str(info.value) == (
        "offload: CPU offload of parameters and optimizer state needs CUDA; the mesh is on cpu"
    )
    with pytest.raises(ft_dist.ShardingError, match=r"expected a 1-D .* or 2-D .* mesh, got 3-D"):
        ft_dist.shard_model(CausalTiny(), init_device_mesh("cpu", (1, 1, 1)))
    once = ft_dist.shard_model(CausalTiny(), mesh)
    with pytest.raises(ft_dist.ShardingError, match="CausalTiny is already sharded"):
        ft_dist.shard_model(once, mesh)


def test_gradient_sync_off_keeps_gradients_unreduced(mesh: DeviceMesh) -> None:
    model = ft_dist.shard_model(CausalTiny(), mesh)
    ids = torch.randint(0, 37, (2, 5))
    ft_dist.set_gradient_sync(model, False)
    model(ids).sum().backward()
    assert all(p.grad is None for p in model.parameters())  # accumulated on the gathered copies
    ft_dist.set_gradient_sync(model, True)
    model(ids).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    ft_dist.set_gradient_sync(nn.Linear(2, 2), False)  # an unsharded model: nothing to do


def _with_grads(seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(shape)) for shape in [(3, 5), (7,), (2, 2, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_equals_torch_on_plain_tensors(norm_type: float, max_norm: float) -> None:
    ours, theirs = _with_grads(1), _with_grads(1)
    ours.append(nn.Parameter(torch.zeros(2)))  # no grad: skipped
    norm = ft_dist.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for p, q in zip(ours, theirs, strict=False):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


def test_clip_measures_only_and_leaves_non_finite_gradients() -> None:
    params = _with_grads(2)
    before = [p.grad.clone() for p in params]
    assert float(ft_dist.clip_grad_norm_(params, None)) > 1
    params[1].grad[0] = math.nan
    before[1][0] = math.nan
    assert torch.isnan(ft_dist.clip_grad_norm_(params, 0.1))
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, b, equal_nan=True)
    assert float(ft_dist.clip_grad_norm_([nn.Parameter(torch.zeros(2))], 1.0)) == 0.0
