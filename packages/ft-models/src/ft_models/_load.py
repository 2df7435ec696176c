"""Streaming a checkpoint into a model built on the meta device, each tensor straight into its final form.

The model is built on the meta device (nothing allocated) and may be transformed there first
(``prepare``: adapters that store their base quantised, a precision policy's storage dtypes, sharding
plans), because on meta a transformation only changes what each tensor *declares*. Then the
checkpoint is read tensor by tensor and each tensor is put where the model and the :class:`Placement`
say, so no full-precision copy of the whole model exists at any moment:

1. the tensor is read on the CPU (one tensor: plain reads of its safetensors file, or GGUF dequantised)
   and moved to the placement's device: straight into the dtype it will be stored in (converted a slice
   at a time), or, for a module that registered ``load_state_dict`` pre-hooks, in its stored dtype;
2. it is handed to the module that owns it with PyTorch's public protocol,
   ``module.load_state_dict({name: tensor}, strict=False, assign=True)``, so the module's own load
   hooks run on it at the precision it was stored in (ft-peft's quantised ``LoRALinear`` quantises the
   dense weight there and stores packed codes and statistics, a DoRA layer takes its magnitude from
   it; ft-models never imports ft-peft);
3. whatever the module now holds in place of meta tensors is cast to the dtype its meta tensor
   declared (or ``Placement.dtype``), keeps the meta tensor's ``requires_grad``, and passes through
   ``Placement.shard``, which may keep only this process's part (a slice, or FSDP2's
   ``distribute_tensor`` on the meta tensor's mesh).

Between tensors the memory their temporaries freed is handed back to the operating system
(``malloc_trim``), so resident memory tracks the model. After the last tensor: tied weights are
re-tied, rotary tables computed, and every module that defines
``init_after_load(device)`` (:class:`InitAfterLoad`) and still holds meta tensors creates and
initialises what the checkpoint does not hold (an adapter's A and B), in module order, so random
initialisation draws the generator in the same order as building the layers on a real device would.
Any tensor still on meta after that is an error.

The checkpoint is checked against the model as built (before ``prepare``) from the files' headers
before any tensor is read: missing keys (naming the index or weights file), unexpected keys, shapes and
non-floating tensors for floating parameters (naming the file that holds them). A tied checkpoint's
stored ``lm_head.weight`` and legacy ``rotary_emb.inv_freq`` buffers are ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ._decoder import CausalLM
from ._rope import RotaryEmbedding
from ._source import CheckpointSource, TensorInfo
from .errors import CheckpointError

__all__ = ["InitAfterLoad", "Placement", "ShardFn", "load_weights"]

ShardFn = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Placement:
    """Where each tensor of a streamed load goes: its device, its dtype and which part of it is kept.

    Attributes:
        device: The device every tensor is placed on.
        dtype: ``None`` (the default): each floating tensor takes the dtype its meta tensor declares
            (the model's dtype, then whatever ``prepare`` set: a frozen base in bf16 beside fp32
            adapters). A dtype: every floating tensor is stored in it.
        shard: ``None`` keeps every tensor whole. Otherwise called as ``shard(key, tensor, like)`` for
            each tensor leaving the meta device, with the tensor in its final dtype and form on
            ``device`` and ``like`` the meta tensor it replaces (carrying any sharding plan, e.g. a
            meta DTensor's mesh and placements); returns what the model keeps: a slice, a DTensor made
            by ``distribute_tensor``. Keys are state-dict keys (``model.layers.0.mlp.up_proj.weight``).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None
    shard: ShardFn | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))


@runtime_checkable
class InitAfterLoad(Protocol):
    """A module holding tensors that no checkpoint stores (an adapter's), created after loading.

    ``init_after_load(device)`` is called once per load, in module order, when the checkpoint's tensors
    are in place and the module still holds meta tensors: it creates them on ``device`` in the dtypes
    and with the ``requires_grad`` the meta tensors declare, and initialises them.
    """

    def init_after_load(self, device: torch.device) -> None:
        """Create and initialise the tensors the checkpoint does not hold."""
        ...


def _expected(model: CausalLM) -> dict[str, tuple[int, ...]]:
    """The checkpoint's contract: every state-dict key of the model as built, with its shape."""
    tied = model.config.tie_word_embeddings
    return {
        k: tuple(t.shape)
        for k, t in model.state_dict(keep_vars=True).items()
        if not (tied and k == "lm_head.weight")
    }


def _ignored(key: str, model: CausalLM) -> bool:
    return key.endswith("rotary_emb.inv_freq") or (
        key == "lm_head.weight" and model.config.tie_word_embeddings
    )


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_checkpoint(
    model: CausalLM, layout: dict[str, TensorInfo], source: str, expected: dict[str, tuple[int, ...]]
) -> list[str]:
    """Raise on missing, unexpected, misshapen or non-floating tensors; return the keys to load in order.

    Raises:
        CheckpointError: naming ``source`` for missing keys, else the file holding the offending tensor.
    """
    missing = sorted(expected.keys() - layout.keys())
    unexpected = sorted(k for k in layout.keys() - expected.keys() if not _ignored(k, model))
    if missing:
        raise CheckpointError(f"{source}: missing keys {_short(missing)}")
    if unexpected:
        raise CheckpointError(f"{layout[unexpected[0]].file}: unexpected keys {_short(unexpected)}")
    floating = {k for k, t in model.state_dict(keep_vars=True).items() if t.is_floating_point()}
    keys = [k for k in layout if k in expected]
    for key in keys:
        info = layout[key]
        if info.shape != expected[key]:
            raise CheckpointError(
                f"{info.file}: tensor {key!r} has shape {info.shape}, the model expects {expected[key]}"
            )
        if key in floating and not info.dtype.is_floating_point:
            raise CheckpointError(
                f"{info.file}: tensor {key!r} is stored as {info.dtype}, not a floating type"
            )
    return keys


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_parameter) for the module's own parameters and persistent buffers."""
    for name, p in module._parameters.items():
        if p is not None:
            yield name, p, True
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            yield name, b, False


def _meta_tensors(module: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    return {n: (t, is_param) for n, t, is_param in _own_tensors(module) if t.is_meta}


def _finish(
    module: nn.Module, prefix: str, before: dict[str, tuple[torch.Tensor, bool]], placement: Placement
) -> None:
    """Give each tensor that left the meta device its declared dtype and ``requires_grad``, then shard it."""
    for name, (like, is_param) in before.items():
        now = getattr(module, name)
        if now is None or now.is_meta:
            continue
        key = prefix + name
        value = base = now.detach()
        if like.is_floating_point() and value.is_floating_point():
            target = placement.dtype or like.dtype
            if value.dtype != target:
                value = value.to(target)
        elif value.dtype != like.dtype:
            raise CheckpointError(
                f"{key}: the model stores {like.dtype} there but was given {value.dtype} "
                "(a module that stores a tensor in another form converts it in a load_state_dict pre-hook)"
            )
        if placement.shard is not None:
            value = placement.shard(key, value, like)
        if is_param:
            if value is not base or now.requires_grad != like.requires_grad:
                setattr(module, name, nn.Parameter(value, requires_grad=like.requires_grad))
        elif value is not base:
            module._buffers[name] = value


def _libc_malloc_trim() -> Callable[[], object] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return functools.partial(libc.malloc_trim, 0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def _return_freed_memory() -> None:
    """Hand the memory the last tensor's temporaries freed back to the operating system.

    glibc serves blocks of up to 32 MiB from its heap once a block that size was freed, so a load that
    alternates short-lived conversion buffers with long-lived (smaller) stored tensors leaves holes the
    process keeps: a few hundred MiB over a 1B model. ``malloc_trim`` releases them, so resident memory
    tracks the model. A no-op where the C library has no ``malloc_trim``.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM()


def _place(model: CausalLM, key: str, source: CheckpointSource, placement: Placement) -> None:
    """Read ``key`` and put it into its final form in the module that owns it (module docstring)."""
    where = source.layout[key].file
    path, _, name = key.rpartition(".")
    try:
        owner = model.get_submodule(path)
    except AttributeError:
        raise CheckpointError(
            f"{where}: tensor {key!r}: the prepared model has no module {path!r} (prepare must keep the "
            "checkpoint's keys)"
        ) from None
    before = _meta_tensors(owner)
    like = before.get(name, (None, False))[0]
    # A module with load hooks gets the tensor as stored (its hooks may derive state from it at full
    # precision); otherwise it is read straight into the dtype it will be stored in, a slice at a time.
    direct = like is not None and like.is_floating_point() and not owner._load_state_dict_pre_hooks
    tensor = source.read(key, (placement.dtype or like.dtype) if direct and like is not None else None)
    value = tensor.to(placement.device)
    del tensor
    try:
        result = owner.load_state_dict({name: value}, strict=False, assign=True)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise CheckpointError(f"{where}: tensor {key!r} does not fit the model ({first})") from None
    del value
    if result.unexpected_keys:
        raise CheckpointError(
            f"{where}: tensor {key!r}: the prepared model has no tensor there (prepare must keep the "
            "checkpoint's keys, as a module swap that holds the wrapped layer's weight does)"
        )
    _finish(owner, f"{path}." if path else "", before, placement)


def load_weights(
    model: CausalLM,
    source: CheckpointSource,
    *,
    placement: Placement | None = None,
    prepare: Callable[[CausalLM], object] | None = None,
) -> CausalLM:
    """Fill a meta-device ``model`` from ``source`` tensor by tensor (see the module docstring).

    Args:
        model: The model as built from ``source.config`` on the meta device, with its floating
            parameters declaring the dtype to load into.
        source: The opened checkpoint.
        placement: Where tensors go (CPU, declared dtypes, whole tensors by default).
        prepare: Called with the model after the checkpoint is checked against it and before any tensor
            is read, to transform it on meta (apply adapters, set storage dtypes, plan sharding).

    Returns:
        ``model``, every tensor materialised.

    Raises:
        CheckpointError: Missing or unexpected keys, a shape mismatch, a non-floating tensor for a
            floating parameter, an unreadable file, or a tensor nothing created.
    """
    placement = placement or Placement()
    keys = _check_checkpoint(model, source.layout, source.source, _expected(model))
    if prepare is not None:
        prepare(model)
    for key in keys:
        _place(model, key, source, placement)
        _return_freed_memory()
    model.tie_weights()
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters(placement.device)
    for name, module in model.named_modules():
        if not isinstance(module, InitAfterLoad):
            continue
        subtree = module.named_modules(prefix=name)  # type: ignore[attr-defined]  # an nn.Module
        pending = {sub: _meta_tensors(m) for sub, m in subtree if _meta_tensors(m)}
        if pending:
            module.init_after_load(placement.device)
            for sub, before in pending.items():
                _finish(model.get_submodule(sub), f"{sub}." if sub else "", before, placement)
    for name, t in model.state_dict(keep_vars=True).items():
        if t.is_meta:
            raise CheckpointError(f"{source.source}: {name!r} was not loaded and nothing initialised it")
    return model
