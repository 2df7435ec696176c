"""Where a training run stands among its ranks, and the steps of setup that depend on it.

Every training recipe runs at every world size through the same setup and loop: in one process
:func:`start` returns a one-rank :class:`World` without a process group and every step below is the
single-device one; under ``torchrun`` it starts the process group (``dist_timeout_s`` bounds every
collective), builds the data-parallel mesh (``dp_replicate`` x ``dp_shard``; null: from the launch) and
the model is sharded with FSDP2 after compile (:func:`shard`). The loss normaliser, gradient sync,
clipping, logging and outputs consult the model (``ft_dist.is_sharded``) or the world, never a
separate code path.

fp16 is refused when sharded: its gradient scaler would need its found-inf flag all-reduced across the
shards every step, and bf16-mixed (FSDP2's ``MixedPrecisionPolicy``) is what sharded runs use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

import ft_dist
from ft_recipes.errors import UserError

__all__ = ["World", "barrier", "check_precision", "finish", "placement", "shard", "start", "together"]


@dataclass(frozen=True)
class World:
    """This process's place in the run.

    Attributes:
        launch: rank, world size, local rank and device (``ft_dist.Launch``).
        mesh: the data-parallel mesh when the run has several ranks, else None.
    """

    launch: ft_dist.Launch
    mesh: Any = None

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over several ranks."""
        return self.mesh is not None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0: the rank that prints progress, logs and writes single-copy outputs."""
        return self.launch.rank == 0


def start(cfg: Any, device: torch.device) -> World:
    """The run's world from torchrun's environment (one rank without it), with its mesh.

    Args:
        cfg: a training config (``dp_shard``, ``dp_replicate``, ``dist_timeout_s``, ``fsdp_offload``,
            ``precision``).
        device: the device the config asks for (``pick_device``); under torchrun with CUDA each rank
            takes ``cuda:LOCAL_RANK``.

    Raises:
        UserError: a mesh that does not fit the launch, ``fsdp_offload`` without CUDA, fp16 when
            sharded, or mesh sizes given to a one-process run that they do not fit.
    """
    try:
        launch = ft_dist.init_distributed(timeout_s=cfg.dist_timeout_s, device_type=device.type)
        if launch.world_size == 1:
            ft_dist.mesh_shape(1, 1, cfg.dp_replicate, cfg.dp_shard)  # sizes a single process cannot have
            return World(launch)
        mesh = ft_dist.build_mesh(cfg.dp_replicate, cfg.dp_shard, device_type=device.type)
    except ft_dist.FtDistError as e:
        raise UserError(f"dp_shard / dp_replicate: {e}") from None
    if cfg.fsdp_offload and device.type != "cuda":
        raise UserError("fsdp_offload: keeping shards in host memory needs CUDA; set fsdp_offload=false")
    return World(launch, mesh)


def check_precision(world: World, precision_name: str) -> None:
    """Refuse fp16 on a sharded run (module docstring).

    Raises:
        UserError: fp16 with several ranks.
    """
    if world.sharded and precision_name == "fp16":
        raise UserError(
            "precision: fp16 is not supported when sharded (its gradient scaler is per rank); use bf16-mixed"
        )


def placement(world: World) -> Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """What keeps this rank's part of each parameter as the model streams in (``_setup.load_model``'s
    ``shard``): ``ft_dist.shard_tensor``, the layout ``shard_model`` then adopts without copying, so a
    rank holds its shards plus one whole tensor in flight. Buffers stay whole; None in one process."""
    if not world.sharded:
        return None
    mesh = world.mesh

    def keep_mine(key: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return ft_dist.shard_tensor(value, mesh) if isinstance(like, torch.nn.Parameter) else value

    return keep_mine


def shard(model: torch.nn.Module, world: World, param_dtype: torch.dtype | None, offload: bool) -> None:
    """Shard ``model`` over the world's mesh (FSDP2 per decoder layer; nothing in one process).

    Call after precision, attention, activation checkpointing and compile, before the optimizer. A model
    loaded through :func:`placement` already holds its shards: they are adopted as they are.
    """
    if world.sharded:
        ft_dist.shard_model(model, world.mesh, param_dtype=param_dtype, offload=offload)


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Training and saving: an error on any rank ends every rank with one line naming the first
    (``ft_dist.abort_on_failure``); in one process errors pass through unchanged."""
    with ft_dist.abort_on_failure():
        yield


def finish() -> None:
    """End the process group after a completed run (nothing in one process)."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        d.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every rank (after rank 0 wrote a file the others read); nothing in one process."""
    if world.sharded:
        torch.distributed.barrier()
