"""Gradient-norm clipping (Pascanu et al. 2013) over sharded and replicated gradients: one global norm.

After FSDP's reduce-scatter each rank holds a slice of every gradient (a DTensor sharded on the mesh's
shard dimension, replicated on HSDP's replicate dimension). The global p-norm is
``(sum over all elements |g|^p)^(1/p)``: each rank sums ``|g|^p`` over its local slices, the partial
sums are added over the mesh dimensions the gradient is *sharded* on (never over a replicate
dimension, which would count a replica twice), and plain tensors (replicated everywhere) are counted
once as they are. The result equals the single-device norm up to fp32 summation order. Gradients on
different meshes, or a mix of DTensors and plain tensors, are grouped by how they must be combined,
one all-reduce per group and mesh dimension (torch's ``clip_grad_norm_`` stacks the per-tensor norms,
which fails for such a mix).

As in ft-recipes' single-device clipping, a non-finite norm leaves the gradients unscaled, so the
caller can see it and skip the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate

__all__ = ["clip_grad_norm_"]

# How a local partial sum is completed: None for plain tensors, else the mesh and its sharded dims.
_Key = tuple[DeviceMesh, tuple[int, ...]] | None


def _mesh_device(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def _local(grad: torch.Tensor) -> tuple[torch.Tensor, _Key]:
    if not isinstance(grad, DTensor):
        return grad, None
    if any(p.is_partial() for p in grad.placements):  # pending sums: complete them first
        grad = grad.redistribute(
            grad.device_mesh, [Replicate() if p.is_partial() else p for p in grad.placements]
        )
    dims = tuple(i for i, p in enumerate(grad.placements) if p.is_shard())
    return grad.to_local(), (grad.device_mesh, dims)


def _power_sum(tensors: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """``sum |x|^p`` (or ``max |x|`` for inf) over ``tensors``, as an fp32 0-d tensor."""
    device = tensors[0].device
    if math.isinf(norm_type):
        maxima = [t.detach().abs().amax().float().to(device) for t in tensors if t.numel()]
        return torch.stack(maxima).amax() if maxima else torch.zeros((), device=device)
    norms = [torch.linalg.vector_norm(t.detach(), norm_type, dtype=torch.float32).to(device) for t in tensors]
    return (torch.stack(norms) ** norm_type).sum()


def clip_grad_norm_(
    params: nn.Module | Iterable[torch.Tensor], max_norm: float | None, *, norm_type: float = 2.0
) -> torch.Tensor:
    """Scale gradients so their global ``norm_type`` norm is at most ``max_norm``; return the norm before.

    Every rank must call it (it runs collectives when gradients are sharded). Works unchanged on an
    unsharded model in one process.

    Args:
        params: a model or parameters; those without ``.grad`` are skipped.
        max_norm: the bound; None only measures.
        norm_type: the p of the p-norm (``inf`` for the largest magnitude).

    Returns:
        The global norm over all gradients as an fp32 0-d tensor (the same value on every rank).
    """
    source = params.parameters() if isinstance(params, nn.Module) else params
    grads = [p.grad for p in source if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    p = float(norm_type)
    buckets: dict[_Key, list[torch.Tensor]] = {}
    for grad in grads:
        local, key = _local(grad)
        buckets.setdefault(key, []).append(local)
    total: torch.Tensor | None = None
    op = dist.ReduceOp.MAX if math.isinf(p) else dist.ReduceOp.SUM
    for key, tensors in buckets.items():
        part = _power_sum(tensors, p)
        if key is not None:
            mesh, dims = key
            part = part.to(_mesh_device(mesh))
            for dim in dims:
                dist.all_reduce(part, op=op, group=mesh.get_group(dim))
        if total is None:
            total = part
        else:
            part = part.to(total.device)
            total = torch.maximum(total, part) if math.isinf(p) else total + part
    assert total is not None
    norm = total if math.isinf(p) else total ** (1.0 / p)
    if max_norm is not None and bool(torch.isfinite(norm)):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        with torch.no_grad():
            for grad in grads:
                local = grad.to_local() if isinstance(grad, DTensor) else grad
                local.mul_(coef.to(local.device))
    return norm
