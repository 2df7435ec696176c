"""Optimizers by name: torch's AdamW (Loshchilov & Hutter 2019, decoupled weight decay) and SGD, and
bitsandbytes' 8-bit AdamW (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization") and
paged AdamW (optimizer state in CUDA unified memory, paged to the host under memory pressure).

Only trainable parameters are handed to the optimizer. bitsandbytes is imported only when one of its
optimizers is asked for. On CPU its 8-bit AdamW runs natively and the paged variants fall back to
ordinary (unpaged) state, with bitsandbytes' own warning.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ft_recipes.training.errors import MissingOptimizerError, OptimizerError

__all__ = ["OPTIMIZERS", "build_optimizer"]

# name -> (module, class, takes betas/eps)
_TABLE: dict[str, tuple[str, str, bool]] = {
    "adamw": ("torch.optim", "AdamW", True),
    "sgd": ("torch.optim", "SGD", False),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", True),
    "paged_adamw": ("bitsandbytes.optim", "PagedAdamW", True),
    "paged_adamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", True),
}
OPTIMIZERS: tuple[str, ...] = tuple(_TABLE)


def build_optimizer(
    params: nn.Module | Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """An optimizer over the parameters that require grad.

    Args:
        params: a model (its trainable parameters are taken) or parameters.
        name: one of :data:`OPTIMIZERS`.
        lr: peak learning rate (the schedule multiplies it).
        weight_decay: decoupled weight decay (AdamW family) or L2 (SGD), applied to every parameter.
        betas: Adam's moment decay rates.
        eps: Adam's denominator term.
        momentum: SGD's momentum.

    Raises:
        OptimizerError: unknown name, no trainable parameter.
        MissingOptimizerError: a bitsandbytes optimizer without bitsandbytes installed.
    """
    if name not in _TABLE:
        raise OptimizerError(f"optimizer: unknown name {name!r} (expected one of {', '.join(OPTIMIZERS)})")
    source = params.parameters() if isinstance(params, nn.Module) else params
    trainable = [p for p in source if p.requires_grad]
    if not trainable:
        raise OptimizerError(f"optimizer: {name!r} got no parameter that requires grad")
    module_name, class_name, adam_like = _TABLE[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise MissingOptimizerError(
            f"optimizer: {name!r} needs bitsandbytes (pip install 'ft-peft[qlora]'): {e}"
        ) from e
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if adam_like:
        kwargs.update(betas=tuple(betas), eps=eps)
    else:
        kwargs.update(momentum=momentum)
    if (module_name, class_name) == ("torch.optim", "AdamW") and all(
        p.device.type in ("cpu", "cuda") for p in trainable
    ):
        # torch's fused kernel: one pass per parameter instead of ~8 elementwise ops, fp32 math for
        # bf16 parameters, several times faster per step (bench/README.md, "Measurements behind code
        # choices"); GradScaler hands it the scale and inf flags itself.
        kwargs["fused"] = True
    optimizer: torch.optim.Optimizer = getattr(module, class_name)(trainable, **kwargs)
    return optimizer
