"""Each rank's part of a parameter, placed before sharding, and the gathering of whole ones.

**Loading into shards.** A model too large for one process is built on the meta device and filled by
a streaming loader one tensor at a time; each rank keeps only its part of each tensor
(:func:`shard_tensor`, a local slice: no communication, every rank reads the tensor itself), so no rank
ever holds the whole model. The parts are laid out as :func:`~ft_dist.shard_model` lays out its
parameters: dim 0 split in ``torch.chunk`` blocks over the mesh's shard dimension, replicated over
HSDP's replicate dimension. :func:`~ft_dist.shard_model` then adopts such parameters as they are
(:func:`adopted`): FSDP2's ``fully_shard`` is applied to placeholders of the model's shapes, and the
placed parameters are put back, where FSDP2 takes them over (its ``load_state_dict`` post-hooks re-read
a unit's parameters, the mechanism it has for ``load_state_dict(assign=True)``).

**Gathering.** :func:`gathered` replaces a module's sharded tensors by whole ones for the duration of a
block, on every rank (each gather is a collective): what a writer needs to compute a merged layer or
copy a parameter, one module or one tensor at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor

from ft_dist.errors import ShardingError

__all__ = ["adopted", "gathered", "shard_placements", "shard_tensor"]


def shard_placements(mesh: DeviceMesh) -> tuple[Placement, ...]:
    """The placements :func:`~ft_dist.shard_model` gives every parameter on ``mesh``: ``Shard(0)`` over
    the shard dimension, ``Replicate()`` over HSDP's replicate dimension."""
    if mesh.ndim == 1:
        return (Shard(0),)
    if mesh.ndim == 2:
        return (Replicate(), Shard(0))
    raise ShardingError(f"shard_model: expected a 1-D (FSDP) or 2-D (HSDP) mesh, got {mesh.ndim}-D")


def shard_tensor(tensor: torch.Tensor, mesh: DeviceMesh) -> DTensor:
    """This rank's part of ``tensor`` (the whole tensor, on every rank) as :func:`~ft_dist.shard_model`
    would shard it: a DTensor holding only the local slice, made without communication.

    A streaming loader calls it for each tensor as it arrives (ft-models' ``Placement(shard=...)``), so
    a rank holds its shards plus one whole tensor in flight.
    """
    return distribute_tensor(tensor.detach(), mesh, shard_placements(mesh), src_data_rank=None)


def _parameter_owners(model: nn.Module) -> dict[int, tuple[nn.Parameter, list[tuple[nn.Module, str]]]]:
    owners: dict[int, tuple[nn.Parameter, list[tuple[nn.Module, str]]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), (param, []))[1].append((module, name))
    return owners


@contextlib.contextmanager
def adopted(model: nn.Module, mesh: DeviceMesh) -> Iterator[None]:
    """Inside the block ``model``'s parameters are meta placeholders of their global shapes (shared
    parameters stay shared); on exit the placed parameters are put back. Wrap ``fully_shard``.

    Raises:
        ShardingError: A parameter is a plain tensor beside DTensors, or a DTensor on another mesh or
            with other placements than ``shard_model`` uses.
    """
    owners = _parameter_owners(model)
    want = shard_placements(mesh)
    for param, places in owners.values():
        module, name = places[0]
        if not isinstance(param, DTensor):
            raise ShardingError(
                f"shard_model: {type(module).__name__}.{name} is a plain tensor while other parameters "
                "are already sharded (place every tensor with shard_tensor, or none)"
            )
        if param.device_mesh != mesh or tuple(param.placements) != want:
            raise ShardingError(
                f"shard_model: {type(module).__name__}.{name} is placed as {tuple(param.placements)} on "
                f"another layout than shard_model's {want} on this mesh"
            )
    for param, places in owners.values():
        like = torch.empty(param.shape, dtype=param.dtype, device="meta")
        holder = nn.Parameter(like, requires_grad=param.requires_grad)
        for module, name in places:
            module._parameters[name] = holder
    try:
        yield
    finally:
        for param, places in owners.values():
            for module, name in places:
                module._parameters[name] = param
    # FSDP2 re-reads each unit's parameters in its load_state_dict post-hooks (for assign=True loads):
    # an empty, non-strict load runs them, so every unit holds the placed parameters from here on.
    model.load_state_dict({}, strict=False)


def is_placed(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is already a DTensor (placed by :func:`shard_tensor`)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with every sharded (DTensor) parameter and buffer replaced by its whole tensor.

    Call on every rank, in the same order (each gather is a collective); without sharded tensors it
    does nothing. The whole tensors are plain, frozen copies: read them, do not train through them. On
    exit the sharded tensors are put back and the copies freed. Use it between steps, never inside a
    forward or backward.

    Yields:
        ``module`` itself.
    """
    swapped: list[tuple[nn.Module, str, bool, torch.Tensor]] = []
    whole: dict[int, torch.Tensor] = {}
    try:
        for sub in module.modules():
            for table, is_param in ((sub._parameters, True), (sub._buffers, False)):
                for name, value in table.items():
                    if not isinstance(value, DTensor):
                        continue
                    if id(value) not in whole:
                        full = value.full_tensor().detach()
                        whole[id(value)] = nn.Parameter(full, requires_grad=False) if is_param else full
                    swapped.append((sub, name, is_param, value))
                    table[name] = whole[id(value)]  # type: ignore[assignment]
        yield module
    finally:
        for sub, name, is_param, value in swapped:
            (sub._parameters if is_param else sub._buffers)[name] = value  # type: ignore[assignment]
        whole.clear()
