"""Mesh shapes, the launch environment and the single-process behaviour of the distributed helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

import ft_dist


@pytest.mark.parametrize(
    ("world", "local", "replicate", "shard", "expected"),
    [
        (8, 4, None, None, (2, 4)),  # two nodes of four: shard within a node, replicate across
        (4, None, None, None, (1, 4)),  # one node
        (6, 4, None, None, (1, 6)),  # unequal nodes: shard over every rank
        (8, 4, None, 8, (1, 8)),  # FSDP across nodes when asked
        (8, 4, 4, None, (4, 2)),
        (8, 4, 2, 4, (2, 4)),
        (1, None, None, None, (1, 1)),
    ],
)
def test_mesh_shape(
    world: int, local: int | None, replicate: int | None, shard: int | None, expected: tuple
) -> None:
    assert ft_dist.mesh_shape(world, local, replicate, shard) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((8, 4, 3, None), "dp_replicate=3 does not divide the world size 8"),
        ((8, 4, None, 3), "dp_shard=3 does not divide the world size 8"),
        ((8, 4, 2, 2), "dp_replicate=2 x dp_shard=2 = 4 does not equal the world size 8"),
        ((8, 4, 0, None), "dp_replicate: expected a positive integer, got 0"),
        ((8, 4, None, True), "dp_shard: expected a positive integer, got True"),
        ((0, None, None, None), "world size: expected a positive integer, got 0"),
    ],
)
def test_mesh_shape_refuses_sizes_that_do_not_fit(args: tuple, message: str) -> None:
    with pytest.raises(ft_dist.ShardingError) as info:
        ft_dist.mesh_shape(*args)
    assert str(info.value) == message


def test_build_mesh_needs_a_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(ft_dist.ShardingError, match="no process group; launch with torchrun"):
        ft_dist.build_mesh()


def test_single_process_launch_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    launch = ft_dist.init_distributed(device_type="cpu")
    assert launch == ft_dist.Launch(0, 1, 0, 1, torch.device("cpu"))
    assert launch.is_main
    assert not dist.is_initialized()
    assert ft_dist.global_count(17) == 17  # no collective without a group
    assert ft_dist.global_count(torch.tensor(5)) == 5
    with pytest.raises(ValueError, match="passes through"), ft_dist.abort_on_failure():
        raise ValueError("passes through")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "environment: WORLD_SIZE='two' is not a non-negative integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "environment: RANK=2 is not below WORLD_SIZE=2"),
        (
            {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"},
            "environment: LOCAL_RANK=3 is not below LOCAL_WORLD_SIZE=2",
        ),
    ],
)
def test_malformed_launch_environment(monkeypatch: pytest.MonkeyPatch, env: dict, message: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ft_dist.DistributedError) as info:
        ft_dist.init_distributed(device_type="cpu")
    assert str(info.value) == message
    assert not dist.is_initialized()


@pytest.mark.parametrize("timeout", [0, -3.0, math.inf, math.nan, "60"])
def test_timeout_must_be_a_positive_number(timeout: object) -> None:
    with pytest.raises(ft_dist.DistributedError, match="timeout_s: expected a positive number of seconds"):
        ft_dist.init_distributed(timeout_s=timeout)  # type: ignore[arg-type]
