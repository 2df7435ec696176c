"""The data-parallel device mesh: FSDP on a 1-D mesh, HSDP on a 2-D one.

HSDP (hybrid sharding, Zhao et al. 2023, "PyTorch FSDP", section 3.2.2) shards parameters within a
group of ranks and replicates the groups: the all-gathers and reduce-scatters of every layer stay on
the fast links inside a node, and only one all-reduce of each gradient shard crosses nodes. The
default shape follows the launch: shard within a node (``LOCAL_WORLD_SIZE`` ranks, as torchrun sets
it), replicate across nodes. torchrun numbers the ranks of a node consecutively, and
``init_device_mesh`` lays ranks out row-major, so the ``dp_shard`` groups are exactly the nodes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ft_dist.errors import ShardingError

__all__ = ["build_mesh", "collective_device", "mesh_shape"]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShardingError(f"{name}: expected a positive integer, got {value!r}")
    return value


def mesh_shape(
    world_size: int,
    local_world_size: int | None = None,
    dp_replicate: int | None = None,
    dp_shard: int | None = None,
) -> tuple[int, int]:
    """The ``(dp_replicate, dp_shard)`` shape of a data-parallel mesh, checked against the world size.

    A pure function, so a configuration can be checked before any process group exists.

    Args:
        world_size: the number of ranks.
        local_world_size: ranks per node (torchrun's ``LOCAL_WORLD_SIZE``); the default shards within a
            node when it divides ``world_size`` (equal nodes), else over every rank.
        dp_replicate: replicas (HSDP's outer dimension); derived from the other sizes when None.
        dp_shard: ranks sharing one copy of the parameters; derived from the other sizes when None.

    Raises:
        ShardingError: a size that is not a positive integer, or sizes whose product is not
            ``world_size``.
    """
    world = _positive("world size", world_size)
    if dp_replicate is not None:
        _positive("dp_replicate", dp_replicate)
    if dp_shard is not None:
        _positive("dp_shard", dp_shard)
    if dp_replicate is None and dp_shard is None:
        local = _positive("local world size", local_world_size) if local_world_size is not None else world
        dp_shard = local if world % local == 0 else world
    if dp_shard is None:
        assert dp_replicate is not None
        if world % dp_replicate:
            raise ShardingError(f"dp_replicate={dp_replicate} does not divide the world size {world}")
        dp_shard = world // dp_replicate
    if dp_replicate is None:
        if world % dp_shard:
            raise ShardingError(f"dp_shard={dp_shard} does not divide the world size {world}")
        dp_replicate = world // dp_shard
    if dp_replicate * dp_shard != world:
        raise ShardingError(
            f"dp_replicate={dp_replicate} x dp_shard={dp_shard} = {dp_replicate * dp_shard} "
            f"does not equal the world size {world}"
        )
    return dp_replicate, dp_shard


def collective_device(group: dist.ProcessGroup | None = None) -> torch.device:
    """The device a small tensor must live on for a collective over ``group`` (the default group).

    CPU when the group has a gloo backend (also the CPU half of ``cpu:gloo,cuda:nccl``), else the
    current CUDA device (NCCL only takes CUDA tensors).
    """
    backend = str(dist.get_backend(group))
    if "gloo" in backend or "nccl" not in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def build_mesh(
    dp_replicate: int | None = None, dp_shard: int | None = None, *, device_type: str | None = None
) -> DeviceMesh:
    """The data-parallel mesh of this run: 1-D ``("dp_shard",)`` (FSDP) or 2-D
    ``("dp_replicate", "dp_shard")`` (HSDP).

    Args:
        dp_replicate: replicas; see :func:`mesh_shape` for the defaults.
        dp_shard: ranks per replica, sharing one copy of the parameters.
        device_type: ``cpu`` or ``cuda``; by default ``cuda`` when the default process group has an
            NCCL backend, else ``cpu``.

    Raises:
        ShardingError: no process group (call :func:`~ft_dist.init_distributed` first), or sizes that
            do not multiply to the world size.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise ShardingError("build_mesh: no process group; launch with torchrun and call init_distributed")
    world = dist.get_world_size()
    local_env = os.environ.get("LOCAL_WORLD_SIZE")
    local = int(local_env) if local_env and local_env.isdigit() else None
    replicate, shard = mesh_shape(world, local, dp_replicate, dp_shard)
    if device_type is None:
        device_type = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
    if replicate == 1:
        return init_device_mesh(device_type, (shard,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(device_type, (replicate, shard), mesh_dim_names=("dp_replicate", "dp_shard"))
