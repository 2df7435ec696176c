"""The recipes' ``attention`` setting: which attention kernel the model runs, applied from outside it.

ft-models builds every attention module with SDPA (the eager kernel where a family modifies scores)
and never reroutes a call by itself. A recipe names the kernel (``auto``, ``sdpa``, ``grouped``,
``eager``; ft-models' ``ATTENTION_KERNELS``) and :func:`apply_attention` puts it on every attention
module, like ``compile`` puts ``torch.compile`` on every block, and returns the text the recipe logs.
For ``auto`` that text says what the rule (``ft_models.auto_attention_kernel``, the one statement of
it) resolves to on this run's device, compute dtype and row length, so a GPU user reads ``sdpa`` and
knows the CPU-only grouped-product path is not in use.

Apply it before ``compile_blocks``: compiled blocks trace the kernel that is set when they first run.
"""

from __future__ import annotations

import torch
from torch import nn

import ft_models
from ft_recipes.training.errors import TrainingError

__all__ = ["ATTENTION_CHOICES", "apply_attention", "describe_attention"]

ATTENTION_CHOICES: tuple[str, ...] = ft_models.ATTENTION_KERNELS


def apply_attention(
    model: nn.Module,
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    training: bool,
    max_seq_len: int | None = None,
) -> str:
    """Set the kernel named ``name`` on every attention module of ``model``; return the log text.

    Args:
        model: An ft-models model (adapters and precision casts may already be applied).
        name: One of :data:`ATTENTION_CHOICES`.
        device: Where the model runs.
        dtype: The dtype attention computes in (the precision policy's compute dtype).
        training: Whether the recipe's forwards are differentiated (training) or not (generation,
            evaluation).
        max_seq_len: The longest row the recipe feeds (its keys per attention call); ``None`` where
            it is not known ahead (generation: only its gradient-free calls matter).

    Returns:
        ``name``, and for ``auto`` what it resolves to, e.g. ``auto -> sdpa (not a CPU: ...)``.

    Raises:
        TrainingError: An unknown name, or ``sdpa`` / ``grouped`` for a model whose layers modify
            attention scores (Gemma 2's soft-cap).
    """
    try:
        ft_models.set_attention_kernel(model, name)
    except ft_models.ConfigError as e:
        raise TrainingError(str(e)) from None
    return describe_attention(
        model, name, device=device, dtype=dtype, training=training, max_seq_len=max_seq_len
    )


def describe_attention(
    model: nn.Module,
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    training: bool,
    max_seq_len: int | None = None,
) -> str:
    """What the ``attention`` setting runs on this model, device, dtype and row length (the log text).

    Args: as :func:`apply_attention`.
    """
    kernels = [m.kernel for m in model.modules() if isinstance(m, ft_models.GroupedQueryAttention)]
    modified = sum(isinstance(k, ft_models.EagerKernel) and k.score_mod is not None for k in kernels)
    if name != "auto" or modified == len(kernels):
        what = name if name != "auto" else "auto -> eager"
        return what + (f" (score modifier kept on {modified} of {len(kernels)} layers)" if modified else "")

    def rule(grad: bool, keys: int) -> tuple[str, str]:
        return ft_models.auto_attention_kernel(device.type, dtype, grad=grad, num_queries=keys, num_keys=keys)

    limit = ft_models.GROUPED_MAX_KEYS
    kernel, why = rule(training, max_seq_len or limit)  # the longest rows
    if kernel == "grouped":
        text = f"auto -> grouped for training calls ({why}); sdpa without gradients (validation, generation)"
    elif (max_seq_len or limit) > limit and rule(training, limit)[0] == "grouped":
        text = (
            f"auto -> grouped for training calls of at most {limit} keys (each packed document is its "
            f"own call); sdpa for longer ones ({why}) and without gradients (validation, generation)"
        )
    else:
        text = f"auto -> sdpa ({why})"
    if modified:
        text += f"; eager on the {modified} of {len(kernels)} layers that modify scores"
    return text
