"""FSDP2 sharding of a decoder, applied from outside the model (Zhao et al. 2023, "PyTorch FSDP").

``fully_shard`` turns each unit's parameters into DTensors sharded along dim 0 of the mesh's shard
dimension; a unit's forward all-gathers them and, unless told otherwise, frees them again after its
forward, and its backward reduce-scatters the gradients. The units, in the order torchtitan's
``parallelize`` applies them:

1. every decoder layer (``model.layers.{i}``, found by name as :func:`~ft_dist.decoder_layers` does);
2. the output group: the final ``norm`` and ``lm_head`` in one unit, with every module outside the
   layers that shares a parameter with them (a tied embedding), so a tied weight is one sharded
   parameter whose gradient sums both uses;
3. the root (the embedding when untied, anything else left), with ``reshard_after_forward=False``:
   its parameters would be gathered again right away by the backward.

**Sum reductions.** FSDP divides every reduced gradient by the number of data-parallel ranks (it
assumes each rank's loss is a mean over equal shares). ft's loss is a sum over the window's trained
tokens divided by their count over every rank (:func:`~ft_dist.global_count`), so the gradients must be
*summed*: :func:`shard_model` sets the divide factor to 1 on every unit (the factor is per unit, not
recursive: a model with the division off on the root only would still divide the layers' gradients).
gloo has no pre-scaled sum (NCCL's ``PREMUL_SUM``) and FSDP picks it for a custom factor, so the units
also force plain ``SUM`` collectives, which both backends have; a factor of 1 then divides nothing.

**Mixed precision** is FSDP2's ``MixedPrecisionPolicy``: ``param_dtype`` is the dtype the all-gather
produces (bf16 under ``bf16-mixed``), gradients are reduced in ``reduce_dtype`` (fp32) and land on the
fp32 sharded parameters. Forward inputs are not cast (RoPE tables and positions stay as they are),
the meaning ft-recipes' single-device ``bf16-mixed`` copies per unit.

Apply activation checkpointing and ``compile`` to the layers *before* sharding: FSDP's hooks then
wrap the checkpointed, compiled forward, and the recomputation runs on the gathered parameters.

**Placed parameters.** A model whose parameters are already this rank's parts (DTensors made by
:func:`~ft_dist.shard_tensor` as a streaming loader filled it, so no rank ever held the whole model) is
sharded the same way: the units are planned on placeholders of the parameters' shapes and the placed
parameters are adopted as the units' shards (``ft_dist._placement``), nothing gathered or copied.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from ft_dist._activation_checkpointing import decoder_layers
from ft_dist._placement import adopted, is_placed
from ft_dist.errors import ShardingError

__all__ = ["fsdp_modules", "is_sharded", "output_group", "set_gradient_sync", "shard_model"]

_OUTPUT_NAMES = ("norm", "lm_head")


def output_group(model: nn.Module) -> list[nn.Module]:
    """The modules of the output unit: ``norm`` and ``lm_head`` outside the decoder layers, plus every
    module outside the layers that shares a parameter with them (a tied input embedding).

    Returns an empty list for a model with neither (its head then stays in the root unit).
    """
    inside = {id(m) for layer in decoder_layers(model) for m in layer.modules()}
    outside = [(name, m) for name, m in model.named_modules() if id(m) not in inside and m is not model]
    group = [m for name, m in outside if name.rsplit(".", 1)[-1] in _OUTPUT_NAMES]
    covered = {id(m) for g in group for m in g.modules()}
    shared = {id(p) for g in group for p in g.parameters()}
    for _, module in outside:
        if id(module) in covered:
            continue
        if any(id(p) in shared for p in module.parameters(recurse=False)):
            group.append(module)
            covered.update(id(m) for m in module.modules())
    return group


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    """Every module of ``model`` that ``fully_shard`` was applied to (each member of a grouped unit)."""
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or any submodule) is sharded with FSDP2."""
    return any(True for _ in _fsdp_iter(model))


def _fsdp_iter(model: nn.Module) -> Iterator[FSDPModule]:
    return (m for m in model.modules() if isinstance(m, FSDPModule))


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn gradient reduction on or off for every sharded unit of ``model`` (no-op when unsharded).

    Under gradient accumulation, every micro-batch but the window's last runs with the sync off: its
    gradients accumulate unreduced (in ``reduce_dtype``) on the gathered parameters, and the last
    micro-batch's backward reduces the window's sum once. For HSDP this covers the reduce-scatter and
    the all-reduce across replicas alike.
    """
    for module in _fsdp_iter(model):
        module.set_requires_gradient_sync(enabled, recurse=False)


def _sum_reductions(module: FSDPModule) -> None:
    module.set_gradient_divide_factor(1.0)
    module.set_force_sum_reduction_for_comms(True)


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
    offload: bool = False,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 on ``mesh``: each decoder layer, the output group, the root.

    A 1-D mesh shards over every rank (FSDP); a 2-D ``("dp_replicate", "dp_shard")`` mesh shards within
    each row and replicates across rows (HSDP). Gradient reductions are sums on every unit (module
    docstring): divide the loss by :func:`~ft_dist.global_count` of the trained tokens.

    Args:
        model: the model, on the mesh's device type (or on the meta device, to be materialised after),
            with whole parameters, or with every parameter already placed by
            :func:`~ft_dist.shard_tensor` on ``mesh`` (then adopted as the shards, not copied).
        mesh: from :func:`~ft_dist.build_mesh`.
        param_dtype: the compute dtype the all-gather casts floating parameters to (``torch.bfloat16``
            for ``bf16-mixed``); None computes in the stored dtype.
        reduce_dtype: the dtype gradients are reduced (and accumulated, while the sync is off) in.
        reshard_after_forward: free each layer's and the output group's gathered parameters after
            their forward (ZeRO-3; the backward gathers them again); False keeps them to the backward
            (ZeRO-2: less communication, more memory). The root always keeps its parameters.
        offload: keep sharded parameters, gradients and optimizer state in (pinned) host memory; CUDA
            only.

    Returns:
        ``model``, whose parameters are now DTensors (state-dict keys unchanged).

    Raises:
        ShardingError: ``offload`` on a non-CUDA mesh, a mesh of more than 2 dimensions, a model
            already sharded, placed parameters beside whole ones or placed on another layout.
    """
    if offload and mesh.device_type != "cuda":
        raise ShardingError(
            f"offload: CPU offload of parameters and optimizer state needs CUDA; the mesh is on "
            f"{mesh.device_type}"
        )
    if mesh.ndim not in (1, 2):
        raise ShardingError(f"shard_model: expected a 1-D (FSDP) or 2-D (HSDP) mesh, got {mesh.ndim}-D")
    if is_sharded(model):
        raise ShardingError(f"shard_model: {type(model).__name__} is already sharded")
    mp_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False
    )
    offload_policy = CPUOffloadPolicy() if offload else OffloadPolicy()
    if is_placed(model):
        with adopted(model, mesh):
            _shard_units(model, mesh, reshard_after_forward, mp_policy, offload_policy)
    else:
        _shard_units(model, mesh, reshard_after_forward, mp_policy, offload_policy)
    for module in _fsdp_iter(model):
        _sum_reductions(module)
    return model


def _shard_units(
    model: nn.Module,
    mesh: DeviceMesh,
    reshard_after_forward: bool,
    mp_policy: MixedPrecisionPolicy,
    offload_policy: OffloadPolicy,
) -> None:
    """``fully_shard`` each decoder layer, the output group, then the root (module docstring)."""
    for layer in decoder_layers(model):
        fully_shard(
            layer,
            mesh=mesh,
            reshard_after_forward=reshard_after_forward,
            mp_policy=mp_policy,
            offload_policy=offload_policy,
        )
    group = output_group(model)
    if group:
        fully_shard(
            group,
            mesh=mesh,
            reshard_after_forward=reshard_after_forward,
            mp_policy=mp_policy,
            offload_policy=offload_policy,
        )
    fully_shard(
        model, mesh=mesh, reshard_after_forward=False, mp_policy=mp_policy, offload_policy=offload_policy
    )
