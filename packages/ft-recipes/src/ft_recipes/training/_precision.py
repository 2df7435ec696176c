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

When the model is sharded, FSDP2 makes the same copies: ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32, cast_forward_inputs=False)`` (``PrecisionPolicy.fsdp_param_dtype`` and
``apply_precision(..., sharded=True)``, which sets the storage dtypes and leaves the casts to FSDP2).

No ``torch.autocast`` is involved: autocast casts per op (including ops outside the model) and keeps
no unit boundary, so its numerics differ from FSDP2's. No parametrisation either: it would rename
state-dict keys (``parametrizations.weight.original``).

The cast wraps each unit's ``forward`` on the instance. Apply the policy before
``ft_dist.apply_activation_checkpointing``, so the cast runs inside the checkpointed region and is
recomputed with it (applying it after is refused).

``precision: auto`` is decided here, one rule per use, both on the same test of native bf16 (a CUDA
device whose tensor cores compute in bf16, ``torch.cuda.is_bf16_supported(including_emulation=False)``:
Ampere and later; or a CPU whose oneDNN has bf16 instructions). The facts about the device are
gathered once (:func:`device_facts`) and the decisions are pure functions of them
(:func:`choose_precision`, :func:`choose_inference_precision`, :func:`choose_tf32`), so every case
(a T4, an A100, a CPU with or without AMX) is stated and tested without the hardware:

- Training (:func:`resolve_precision`, both training recipes): ``bf16-mixed`` wherever bf16 is native.
  A CUDA GPU without it (T4, V100: bf16 tensors work there but the arithmetic is emulated, slower than
  fp32) gets ``fp16`` with the gradient scaler, the format its tensor cores have; a CPU without it gets
  ``fp32``. The masters and optimizer state stay fp32 in every case, so the half format touches only
  the compute.
- Inference (:func:`resolve_inference_precision`, ``generate`` and ``eval``): ``bf16`` on a CUDA device
  with native bf16, ``fp16`` on an older CUDA GPU, else ``fp32``, on a CPU even with native bf16.
  Inference keeps no fp32 master: bf16 rounds the weights themselves, and greedy answers then drift
  from the fp32 ones (transformers' default on a CPU) within a few dozen tokens. On a GPU that is the
  price of the format models are shipped and served in, for half the memory and the tensor cores; on
  a CPU decoding one row gains a fraction, not a multiple, so the answers' fidelity wins.

**TF32** (the recipes' ``tf32`` key, on by default): on a CUDA GPU with TF32 tensor cores (compute
capability 8.0 and later) fp32 matmuls and cuDNN convolutions run in TF32 (fp32 range, 10-bit mantissa
products, fp32 accumulation), which is what makes an ``fp32`` run fast there; the rest of the run
(softmax, norms, the loss, the optimizer) stays fp32. :func:`apply_tf32` sets
``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` (the CUDA-only
switches; ``torch.set_float32_matmul_precision`` would also change oneDNN's CPU matmuls). On a CPU or
an older GPU the key has no effect and nothing is set.
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
    "DeviceFacts",
    "InferencePrecision",
    "PrecisionPolicy",
    "apply_precision",
    "apply_tf32",
    "choose_inference_precision",
    "choose_precision",
    "choose_tf32",
    "device_facts",
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

    @property
    def fsdp_param_dtype(self) -> torch.dtype | None:
        """The ``param_dtype`` of FSDP2's ``MixedPrecisionPolicy`` when the model is sharded: the compute
        dtype where it differs from the master dtype (``bf16-mixed``, ``fp16``), else None.

        Pass it to ``ft_dist.shard_model`` (whose ``reduce_dtype`` is fp32) and call
        :func:`apply_precision` with ``sharded=True``: FSDP2 then makes the per-unit bf16 copies when it
        all-gathers a unit, instead of the casts :func:`apply_precision` installs for one device.
        """
        return self.compute_dtype if self.compute_dtype != self.master_dtype else None

    def make_grad_scaler(self, device: str | torch.device) -> torch.amp.GradScaler | None:
        """A ``torch.amp.GradScaler`` for fp16, else None."""
        return torch.amp.GradScaler(torch.device(device).type) if self.grad_scaler else None


_POLICIES: dict[str, tuple[torch.dtype, torch.dtype, torch.dtype, bool]] = {
    "fp32": (torch.float32, torch.float32, torch.float32, False),
    "bf16-mixed": (torch.bfloat16, torch.float32, torch.bfloat16, False),
    "bf16-pure": (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),
    "fp16": (torch.float16, torch.float32, torch.float16, True),
}


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What the precision decisions need to know about a device (:func:`device_facts` reads them).

    Attributes:
        type: ``cuda``, ``cpu`` or another device type.
        name: How messages name it (the GPU's name, or the CPU's capability).
        present: False for a CUDA device in a process that has none.
        native_bf16: bf16 arithmetic in hardware (CUDA: compute capability 8.0+; CPU: oneDNN bf16).
        emulated_bf16: CUDA only: bf16 tensors work but the arithmetic is emulated (T4, V100).
        tf32: CUDA only: TF32 tensor cores (compute capability 8.0+).
        note: Why a CPU lacks native bf16 (for the message).
    """

    type: str
    name: str
    present: bool = True
    native_bf16: bool = False
    emulated_bf16: bool = False
    tf32: bool = False
    note: str = ""


def device_facts(device: str | torch.device) -> DeviceFacts:
    """Read :class:`DeviceFacts` for ``device`` from torch (the only function here that asks the hardware)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return DeviceFacts("cuda", "no CUDA device", present=False)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return DeviceFacts(
            "cuda",
            torch.cuda.get_device_name(dev),
            native_bf16=native,
            emulated_bf16=not native and torch.cuda.is_bf16_supported(including_emulation=True),
            tf32=torch.cuda.get_device_capability(dev) >= (8, 0),
        )
    if dev.type == "cpu":
        name = f"CPU ({torch.backends.cpu.get_cpu_capability()})"
        if not torch.backends.mkldnn.is_available():
            return DeviceFacts("cpu", name, note="oneDNN is not available in this torch build")
        return DeviceFacts("cpu", name, native_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return DeviceFacts(dev.type, f"device type {dev.type!r}")


def _bf16_verdict(facts: DeviceFacts) -> str:
    """One clause saying what ``facts`` means for bf16, for the reason strings."""
    if facts.type == "cuda":
        if not facts.present:
            return "no CUDA device is available"
        if facts.native_bf16:
            return f"CUDA {facts.name} supports bf16"
        if facts.emulated_bf16:
            return f"CUDA {facts.name} has no native bf16 (it would be emulated, slower than fp32)"
        return f"CUDA {facts.name} does not support bf16"
    if facts.type == "cpu":
        if facts.note:
            return f"{facts.name}: {facts.note}"
        if facts.native_bf16:
            return f"{facts.name}: oneDNN supports native bf16 matmuls"
        return f"{facts.name}: oneDNN has no native bf16 (bf16 matmuls would be emulated, slower)"
    return f"{facts.name}: bf16 support unknown"


def _check_bf16_request(name: str, facts: DeviceFacts) -> str:
    """The reason for an explicit bf16 choice; raises where the CUDA device cannot hold bf16 at all."""
    if facts.type == "cuda" and not facts.native_bf16:
        if not facts.emulated_bf16:
            raise PrecisionError(f"precision: {name!r} on cuda: {_bf16_verdict(facts)}")
        return f"{name}: requested ({_bf16_verdict(facts)})"
    return f"{name}: requested"


def choose_precision(name: str, facts: DeviceFacts) -> tuple[str, str]:
    """The training precision for ``name`` on a device with ``facts``: ``(chosen, reason)``.

    ``auto``: ``bf16-mixed`` where bf16 is native; on a CUDA GPU without it ``fp16`` (with the gradient
    scaler), never emulated bf16; elsewhere ``fp32``.

    Raises:
        PrecisionError: unknown name, or a bf16 policy asked for on a CUDA device without bf16.
    """
    if name not in PRECISIONS:
        raise PrecisionError(f"precision: unknown value {name!r} (expected one of {', '.join(PRECISIONS)})")
    if name != "auto":
        return name, _check_bf16_request(name, facts) if name.startswith("bf16") else f"{name}: requested"
    if facts.native_bf16:
        chosen = "bf16-mixed"
    elif facts.type == "cuda" and facts.present:
        chosen = "fp16"
    else:
        chosen = "fp32"
    why = _bf16_verdict(facts)
    if chosen == "fp16":
        why += "; fp16 with loss scaling uses its tensor cores"
    return chosen, f"auto -> {chosen}: {why}"


def resolve_precision(name: str, device: str | torch.device) -> PrecisionPolicy:
    """Resolve a precision option for a device (:func:`choose_precision` on :func:`device_facts`).

    Args:
        name: one of :data:`PRECISIONS`.
        device: the training device (``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        PrecisionError: unknown name, or a bf16 policy asked for on a CUDA device without bf16.
    """
    if name not in PRECISIONS:  # before asking the hardware anything
        raise PrecisionError(f"precision: unknown value {name!r} (expected one of {', '.join(PRECISIONS)})")
    chosen, reason = choose_precision(name, device_facts(device))
    log.info("precision %s", reason)
    compute, master, frozen, scaler = _POLICIES[chosen]
    return PrecisionPolicy(chosen, compute, master, frozen, scaler, reason)


def choose_tf32(requested: bool, facts: DeviceFacts) -> tuple[bool | None, str]:
    """Whether fp32 matmuls use TF32 tensor cores: ``(setting, reason)``.

    ``setting`` is True or False on a CUDA GPU with TF32 (what :func:`apply_tf32` sets), None where TF32
    does not exist (a CPU, an older GPU): nothing is set there.
    """
    if facts.type != "cuda" or not facts.present:
        return None, f"tf32: no effect on {facts.name}"
    if not facts.tf32:
        return None, f"tf32: CUDA {facts.name} has no TF32 tensor cores (compute capability < 8.0)"
    if requested:
        return True, f"tf32 on: fp32 matmuls on CUDA {facts.name} use TF32 tensor cores"
    return False, f"tf32 off: requested; fp32 matmuls on CUDA {facts.name} run in full fp32"


def apply_tf32(requested: bool, device: str | torch.device) -> str:
    """Decide TF32 for ``device`` (:func:`choose_tf32`) and set torch's CUDA switches; returns the reason.

    Process-wide, as the switches are. Only ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` are touched, and only on a GPU that has TF32.
    """
    setting, reason = choose_tf32(requested, device_facts(device))
    if setting is not None:
        torch.backends.cuda.matmul.allow_tf32 = setting
        torch.backends.cudnn.allow_tf32 = setting
    log.info("%s", reason)
    return reason


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


def choose_inference_precision(name: str, facts: DeviceFacts) -> tuple[str, str]:
    """The inference precision for ``name`` on a device with ``facts``: ``(chosen, reason)``.

    ``auto``: ``bf16`` on a CUDA GPU with native bf16, ``fp16`` on one without (never emulated bf16),
    ``fp32`` elsewhere, on a CPU even with native bf16 (the inference rule of the module docstring).

    Raises:
        PrecisionError: unknown name, or ``bf16`` asked for on a CUDA device without bf16.
    """
    if name not in INFERENCE_PRECISIONS:
        raise PrecisionError(
            f"precision: unknown value {name!r} (expected one of {', '.join(INFERENCE_PRECISIONS)})"
        )
    if name != "auto":
        return name, _check_bf16_request(name, facts) if name == "bf16" else f"{name}: requested"
    why = _bf16_verdict(facts)
    if facts.type == "cuda" and facts.present:
        chosen = "bf16" if facts.native_bf16 else "fp16"
    else:
        chosen = "fp32"
        if facts.native_bf16:
            why += "; inference on a CPU stays fp32 (no fp32 master to keep the answers faithful)"
    return chosen, f"auto -> {chosen}: {why}"


def resolve_inference_precision(name: str, device: str | torch.device) -> InferencePrecision:
    """Resolve a generation / evaluation precision (:func:`choose_inference_precision` on
    :func:`device_facts`).

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
    chosen, reason = choose_inference_precision(name, device_facts(device))
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


def apply_precision(model: nn.Module, policy: PrecisionPolicy, *, sharded: bool = False) -> nn.Module:
    """Set parameter storage dtypes for ``policy`` and, for mixed policies, install the per-unit casts.

    Call after freezing (``ft_peft.set_trainable``) and before activation checkpointing, compile and
    building the optimizer. State-dict keys do not change. Returns ``model``.

    With ``sharded=True`` only the storage dtypes are set: the model is about to be sharded with
    ``ft_dist.shard_model(..., param_dtype=policy.fsdp_param_dtype)``, whose all-gather makes the same
    per-unit compute copies (two casts would be one too many, and FSDP2 reads the parameters it
    manages, not a cast installed around them).

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
    if sharded or policy.compute_dtype == policy.master_dtype:
        return model
    for unit in _units(model):
        if "forward" in vars(unit):
            raise PrecisionError(
                f"precision: {type(unit).__name__}.forward is already wrapped; apply precision before "
                "activation checkpointing"
            )
        unit.forward = functools.partial(_cast_forward, unit.forward, unit, policy.compute_dtype)  # type: ignore[method-assign]
    return model
