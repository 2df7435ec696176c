"""Choosing the attention kernel by name, from outside the model: ``auto``, ``sdpa``, ``grouped``, ``eager``.

Builders give every attention module a kernel (SDPA, or the eager kernel with a score modifier where a
family changes scores); nothing in the model switches kernels behind the caller's back. Which kernel
runs is a setting applied afterwards, like ``torch.compile``: :func:`set_attention_kernel` puts the
named kernel on every :class:`GroupedQueryAttention` of a model.

* ``sdpa``: :class:`SDPAKernel`, PyTorch's fused ``scaled_dot_product_attention``.
* ``grouped``: :class:`GroupedKernel`, :func:`grouped_matmul_attention` (batched products around ATen's
  softmax kernels), for every call.
* ``eager``: :class:`EagerKernel`, explicit fp32 scores and softmax.
* ``auto``: :class:`AutoKernel`, which picks per call by :func:`auto_attention_kernel`: ``grouped`` for
  a bf16 call on the CPU that autograd will differentiate, with more than one query and at most
  :data:`GROUPED_MAX_KEYS` keys (training), ``sdpa`` for every other call (any accelerator, fp32 and
  fp16, no gradients, single-query decoding, longer rows).

A layer whose family modifies attention scores (Gemma 2's soft-cap, an :class:`EagerKernel` with a
``score_mod``) keeps the eager kernel and its modifier under ``auto`` and ``eager``; ``sdpa`` and
``grouped`` cannot modify scores and are refused for it, rather than silently dropping the cap.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from ._attention import (
    AttentionKernel,
    EagerKernel,
    GroupedQueryAttention,
    ScoreMod,
    SDPAKernel,
    grouped_matmul_attention,
)
from .errors import ConfigError

__all__ = [
    "ATTENTION_KERNELS",
    "GROUPED_MAX_KEYS",
    "AttentionKernelName",
    "AutoKernel",
    "GroupedKernel",
    "attention_kernel",
    "auto_attention_kernel",
    "set_attention_kernel",
]

AttentionKernelName = Literal["auto", "sdpa", "grouped", "eager"]
ATTENTION_KERNELS: tuple[str, ...] = get_args(AttentionKernelName)

# grouped_matmul_attention keeps the [b, n_h, s, t] probabilities for the backward, where flash
# attention keeps O(s) per head. Up to 1024 keys that is at most about what a layer already saves
# (SmolLM2-135M: 9 * 1024 per token against ~10k for its projections and MLP); beyond, memory would
# grow with the square of the context, so `auto` keeps SDPA for longer rows.
GROUPED_MAX_KEYS = 1024


def auto_attention_kernel(
    device_type: str, dtype: torch.dtype, *, grad: bool, num_queries: int, num_keys: int
) -> tuple[Literal["sdpa", "grouped"], str]:
    """The kernel ``auto`` runs for one attention call, and why (the one statement of the rule).

    PyTorch's CPU flash-attention kernel is slow in bf16 next to the CPU's bf16 matrix products, and
    the grouped products win clearly only where the backward runs too (bench/README.md, "Measurements
    behind code choices"). On accelerators SDPA's fused kernels are the fast path; in fp32 SDPA is
    as fast; without gradients the gain is small; one query is the decode step's case, which
    ft-models' compiled step handles itself; past :data:`GROUPED_MAX_KEYS` keys the saved
    probabilities would grow with the square of the row.

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ...
        dtype: The attention inputs' dtype.
        grad: Whether autograd will differentiate the call.
        num_queries: ``s``, new tokens per row.
        num_keys: ``t``, keys per row.

    Returns:
        ``("grouped" | "sdpa", reason)``.
    """
    if device_type != "cpu":
        return "sdpa", "not a CPU: the grouped products are a CPU path"
    if dtype != torch.bfloat16:
        return "sdpa", "not bf16: SDPA is as fast"
    if not grad:
        return "sdpa", "no gradients: the grouped products gain little"
    if num_queries <= 1:
        return "sdpa", "one query per row"
    if num_keys > GROUPED_MAX_KEYS:
        return "sdpa", f"more than {GROUPED_MAX_KEYS} keys: the saved probabilities would grow as s x t"
    return "grouped", f"CPU, bf16, with gradients, at most {GROUPED_MAX_KEYS} keys"


class GroupedKernel:
    """:func:`grouped_matmul_attention` for every call (the ``grouped`` setting)."""

    op_spec = ("grouped", 0.0)  # how the compiled packed-row operator names this kernel

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        return grouped_matmul_attention(q, k, v, mask, scale)

    def __repr__(self) -> str:
        return "GroupedKernel()"


class AutoKernel:
    """Per call, the kernel :func:`auto_attention_kernel` names (the ``auto`` setting).

    Args:
        grad: Whether the calls will be differentiated; by default read from each call's inputs. The
            compiled packed-row operator, which runs below autograd, passes its caller's flag.
    """

    op_spec = ("auto", 0.0)  # how the compiled packed-row operator names this kernel

    def __init__(self, grad: bool | None = None) -> None:
        self.sdpa, self.grouped = SDPAKernel(), GroupedKernel()
        self.grad = grad

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        grad = self.grad
        if grad is None:
            grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        kernel, _ = auto_attention_kernel(
            q.device.type, q.dtype, grad=grad, num_queries=q.shape[2], num_keys=k.shape[2]
        )
        return (self.grouped if kernel == "grouped" else self.sdpa)(q, k, v, mask, scale)

    def __repr__(self) -> str:
        return "AutoKernel()"


def attention_kernel(name: str, score_mod: ScoreMod | None = None) -> AttentionKernel:
    """A kernel by setting name; only ``eager`` and ``auto`` (which then runs eager) take ``score_mod``.

    Raises:
        ConfigError: An unknown name, or a score modifier for a kernel that cannot apply it.
    """
    if name not in ATTENTION_KERNELS:
        raise ConfigError(
            f"attention: unknown kernel {name!r}; expected one of {', '.join(ATTENTION_KERNELS)}"
        )
    if score_mod is not None:
        if name in ("sdpa", "grouped"):
            raise ConfigError(
                f"attention: {name!r} cannot modify attention scores ({score_mod!r}); use auto or eager"
            )
        return EagerKernel(score_mod=score_mod)
    kernels: dict[str, type[AttentionKernel]] = {
        "auto": AutoKernel,
        "sdpa": SDPAKernel,
        "grouped": GroupedKernel,
        "eager": EagerKernel,
    }
    return kernels[name]()


def set_attention_kernel(model: nn.Module, name: str) -> int:
    """Put the kernel named ``name`` on every attention module of ``model``; return how many.

    A layer whose kernel modifies scores keeps its modifier (on the eager kernel). Nothing is changed
    when any layer refuses the name.

    Args:
        model: A model built by ft-models (adapters, precision casts and compiled blocks included:
            only the attention modules' ``kernel`` attribute changes). Apply before ``torch.compile``
            so the compiled graphs trace the chosen kernel.
        name: One of :data:`ATTENTION_KERNELS`.

    Raises:
        ConfigError: An unknown name, ``sdpa`` / ``grouped`` for a layer that modifies scores, or a
            model without attention modules.
    """
    modules = [(path, m) for path, m in model.named_modules() if isinstance(m, GroupedQueryAttention)]
    if not modules:
        raise ConfigError(f"attention: {type(model).__name__} has no attention modules to set a kernel on")
    kernels = []
    for path, module in modules:
        kernel = module.kernel
        score_mod = kernel.score_mod if isinstance(kernel, EagerKernel) else None
        try:
            kernels.append(attention_kernel(name, score_mod))
        except ConfigError as e:
            raise ConfigError(f"{e} (at {path})") from None
    for (_, module), kernel in zip(modules, kernels, strict=True):
        module.kernel = kernel
    return len(modules)
