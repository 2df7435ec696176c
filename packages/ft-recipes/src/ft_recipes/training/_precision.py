"""Precision policies: fp32, bf16 mixed precision with fp32 master weights, pure bf16, fp16 with loss scaling.

``bf16-mixed`` has the meaning of FSDP2's ``MixedPrecisionPolicy(param_dtype=torch.bfloat16,
reduce_dtype=torch.float32)`` (Micikevicius et al. 2018, "Mixed Precision Training"): trainable
parameters and the optimizer state stay fp32 (the master weights); each forward computes with bf16
copies of the weights, made per unit (a decoder layer, or a top-level module such as ``embed_tokens``
or ``lm_head``) when the unit runs, as FSDP2 casts a unit's parameters when it all-gathers them. The
copy is an autograd cast, so the bf16 weight gradient is cast back and accumulated into the fp32
``.grad`` (what FSDP2 does with ``reduce_dtype=float32``). Frozen floating weights (a LoRA base) are
simply stored in bf16. Activations are bf16 because the weights are; the modules that need range or
precision upcast explicitly (ft-models computes RMSNorm statistics, RoPE and the eager softmax in
fp32; :func:`linear_cross_entropy` upcasts logits). Forward inputs are not cast (RoPE tables stay fp32):
a sharded run uses the same policy with ``cast_forward_inputs=False``.

No ``torch.autocast`` is involved: autocast casts per op (including ops outside the model) and keeps
no unit boundary, so its numerics differ from FSDP2's. No parametrisation either: it would rename
state-dict keys (``parametrizations.weight.original``).

The cast wraps each unit's ``forward`` on the instance. Apply the policy before
``ft_dist.apply_activation_checkpointing``, so the cast runs inside the checkpointed region and is
recomputed with it (applying it after is refused).

``precision: auto`` is decided here, one rule per use, both on the same test of native bf16 (a CUDA
device that supports it, or a CPU whose oneDNN has bf16 instructions):

- Training (:func:`resolve_precision`, both training recipes): ``bf16-mixed`` wherever bf16 is native,
  else ``fp32``. The masters and optimizer state stay fp32, so bf16 touches only the compute, which
  native bf16 makes faster; emulated bf16 would be slower than fp32.
- Inference (:func:`resolve_inference_precision`, ``generate`` and ``eval``): ``bf16`` on a CUDA device
  with bf16, else ``fp32``, on a CPU even with native bf16. Inference keeps no fp32 master: bf16
  rounds the weights themselves, and greedy answers then drift from the fp32 ones (transformers'
  default on a CPU) within a few dozen tokens. On a GPU that is the price of the format models are
  shipped and served in, for half the memory and the tensor cores; on a CPU decoding one row gains a
  fraction, not a multiple, so the answers' fidelity wins.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ft_dist import decoder_layers
from ft_recipes.training.errors import PrecisionError

__all__ = [
    "INFERENCE_PRECISIONS",
    "PRECISIONS",
    "InferencePrecision",
    "PrecisionPolicy",
    "apply_precision",
    "resolve_inference_precision",
    "resolve_precision",
]

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "bf16-mixed", "bf16-pure", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16-mixed", "bf16-pure", "fp16")
INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """A resolved precision.

    Attributes:
        name: ``fp32``, ``bf16-mixed``, ``bf16-pure`` or ``fp16``.
        compute_dtype: dtype of the weights during forward and backward.
        master_dtype: dtype of trainable parameters and hence of the optimizer state.
        frozen_dtype: storage dtype of frozen floating parameters.
        grad_scaler: whether the loss must be scaled (fp16's narrow exponent range).
        reason: why this precision was chosen (logged; shown for ``auto``).
    """

    name: str
    compute_dtype: torch.dtype
    master_dtype: torch.dtype
    frozen_dtype: torch.dtype
    grad_scaler: bool
    reason: str

    def make_grad_scaler(self, device: str | torch.device) -> torch.amp.GradScaler | None:
        """A ``torch.amp.GradScaler`` for fp16, else None."""
        return torch.amp.GradScaler(torch.device(device).type) if self.grad_scaler else None


_POLICIES: dict[str, tuple[torch.dtype, torch.dtype, torch.dtype, bool]] = {
    "fp32": (torch.float32, torch.float32, torch.float32, False),
    "bf16-mixed": (torch.bfloat16, torch.float32, torch.bfloat16, False),
    "bf16-pure": (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),
    "fp16": (torch.float16, torch.float32, torch.float16, True),
}


def _native_bf16(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
        return ok, f"CUDA {name} {'supports' if ok else 'does not support'} bf16"
    if device.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        if not torch.backends.mkldnn.is_available():
            return False, f"CPU ({capability}): oneDNN is not available in this torch build"
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        verdict = (
            "supports native bf16 matmuls"
            if ok
            else "has no native bf16 (bf16 matmuls would be emulated, slower)"
        )
        return ok, f"CPU ({capability}): oneDNN {verdict}"
    return False, f"device type {device.type!r}: bf16 support unknown"


def resolve_precision(name: str, device: str | torch.device) -> PrecisionPolicy:
    """Resolve a precision option for a device; ``auto`` picks ``bf16-mixed`` where bf16 is native.

    Args:
        name: one of :data:`PRECISIONS`.
        device: the training device (``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        PrecisionError: unknown name, or a bf16 policy asked for on a CUDA device without bf16.
    """
    if name not in PRECISIONS:
        raise PrecisionError(f"precision: unknown value {name!r} (expected one of {', '.join(PRECISIONS)})")
    dev = torch.device(device)
    native, why = _native_bf16(dev) if name in ("auto", "bf16-mixed", "bf16-pure") else (True, "")
    if name == "auto":
        chosen = "bf16-mixed" if native else "fp32"
        reason = f"auto -> {chosen}: {why}"
    else:
        if name.startswith("bf16") and dev.type == "cuda" and not native:
            raise PrecisionError(f"precision: {name!r} on {dev}: {why}")
        chosen, reason = name, f"{name}: requested"
    log.info("precision %s", reason)
    compute, master, frozen, scaler = _POLICIES[chosen]
    return PrecisionPolicy(chosen, compute, master, frozen, scaler, reason)


@dataclasses.dataclass(frozen=True)
class InferencePrecision:
    """A resolved inference precision: the one dtype of every weight and activation.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``.
        dtype: the model's dtype.
        reason: why this precision was chosen (logged; shown for ``auto``).
    """

    name: str
    dtype: torch.dtype
    reason: str


_INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_inference_precision(name: str, device: str | torch.device) -> InferencePrecision:
    """Resolve a generation / evaluation precision; ``auto`` picks bf16 on a CUDA device with bf16 only
    (the inference rule of the module docstring: a CPU stays fp32 even with native bf16).

    Args:
        name: one of :data:`INFERENCE_PRECISIONS`.
        device: the device the model runs on.

    Raises:
        PrecisionError: unknown name, or ``bf16`` asked for on a CUDA device without bf16.
    """
    if name not in INFERENCE_PRECISIONS:
        raise PrecisionError(
            f"precision: unknown value {name!r} (expected one of {', '.join(INFERENCE_PRECISIONS)})"
        )
    dev = torch.device(device)
    if name == "auto":
        native, why = _native_bf16(dev)
        chosen = "bf16" if native and dev.type == "cuda" else "fp32"
        if native and dev.type != "cuda":
            why += "; inference on a CPU stays fp32 (no fp32 master to keep the answers faithful)"
        reason = f"auto -> {chosen}: {why}"
    else:
        if name == "bf16" and dev.type == "cuda":
            native, why = _native_bf16(dev)
            if not native:
                raise PrecisionError(f"precision: 'bf16' on {dev}: {why}")
        chosen, reason = name, f"{name}: requested"
    log.info("inference precision %s", reason)
    return InferencePrecision(chosen, _INFERENCE_DTYPES[chosen], reason)


def _units(model: nn.Module) -> list[nn.Module]:
    """Decoder layers, then the topmost modules outside them that own parameters (with their subtree)."""
    layers = decoder_layers(model)
    inside = {id(m) for layer in layers for m in layer.modules()}
    units: list[nn.Module] = list(layers)
    covered = set(inside)

    def visit(module: nn.Module) -> None:
        if id(module) in covered:
            return
        if any(True for _ in module.parameters(recurse=False)):
            units.append(module)
            covered.update(id(m) for m in module.modules())
            return
        for child in module.children():
            visit(child)

    visit(model)
    return units


def _cast_forward(
    forward: Callable[..., Any],
    unit: nn.Module,
    dtype: torch.dtype,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run ``forward`` with the unit's floating parameters seen as ``dtype`` copies (autograd casts).

    The copies are swapped in by ``torch.nn.utils.stateless._reparametrize_module`` (the mechanism
    behind ``torch.func.functional_call``, which would call the module and so re-enter this wrapper)
    and swapped back on exit. Dynamo treats that context as a temporary, restored swap, so a compiled
    block whose forward runs inside activation checkpointing can contain it; assigning
    ``_parameters`` by hand is a side effect it refuses inside a checkpoint (the block then ran eagerly).
    """
    casts = {
        name: param.to(dtype)
        for name, param in unit.named_parameters(remove_duplicate=False)
        if param.is_floating_point() and param.dtype != dtype
    }
    with torch.nn.utils.stateless._reparametrize_module(unit, casts):
        return forward(*args, **kwargs)


def apply_precision(model: nn.Module, policy: PrecisionPolicy) -> nn.Module:
    """Set parameter storage dtypes for ``policy`` and, for mixed policies, install the per-unit casts.

    Call after freezing (``ft_peft.set_trainable``) and before activation checkpointing, compile and
    building the optimizer. State-dict keys do not change. Returns ``model``.

    Raises:
        PrecisionError: a unit's ``forward`` is already wrapped (activation checkpointing or another
            wrapper applied first).
    """
    for param in model.parameters():
        if not param.is_floating_point():
            continue  # packed 4-bit / int8 bases keep their storage
        target = policy.master_dtype if param.requires_grad else policy.frozen_dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    if policy.compute_dtype == policy.master_dtype:
        return model
    for unit in _units(model):
        if "forward" in vars(unit):
            raise PrecisionError(
                f"precision: {type(unit).__name__}.forward is already wrapped; apply precision before "
                "activation checkpointing"
            )
        unit.forward = functools.partial(_cast_forward, unit.forward, unit, policy.compute_dtype)  # type: ignore[method-assign]
    return model
