"""Shared setup steps of every recipe: device and precision choice, model + tokenizer + adapter loading.

Precision ``auto`` follows ft's rule: bf16 where the device computes it natively (CUDA with bf16
support), else fp32; the choice is logged by the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ft_models import CausalLM
from ft_recipes._assets import resolve_path
from ft_recipes.config import instantiate
from ft_recipes.errors import MissingFileError, UserError

__all__ = ["load_model_and_tokenizer", "pick_device", "pick_dtype", "stop_token_ids"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# End-of-turn markers of common chat formats; generation stops at any that the tokenizer has.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>")


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' requested but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on a CUDA device that supports it, else fp32."""
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model_and_tokenizer(
    model_node: Mapping[str, Any],
    tokenizer_node: Mapping[str, Any],
    adapter: str | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[CausalLM, Any]:
    """Instantiate model and tokenizer from their config nodes and load a PEFT adapter if given.

    Args:
        model_node: ``_component_`` node of the model loader (``from_pretrained``); receives ``dtype``
            and ``device``.
        tokenizer_node: ``_component_`` node of the tokenizer loader.
        adapter: Directory with ``adapter_config.json`` and ``adapter_model.safetensors``, or None.
        device: Target device.
        dtype: Parameter dtype.
    """
    model: CausalLM = instantiate(model_node, key="model", allow_any=True, dtype=dtype, device=device)
    if adapter is not None:
        import ft_peft

        path = resolve_path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise MissingFileError(f"adapter: {adapter}: no adapter_config.json there")
        ft_peft.load_adapter(model, path, adapter_dtype=dtype)
        model.to(device)
    tokenizer = instantiate(tokenizer_node, key="tokenizer", allow_any=True)
    return model.eval(), tokenizer


def stop_token_ids(tokenizer: Any) -> set[int]:
    """EOS plus the end-of-turn markers the tokenizer defines."""
    stops = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    specials = tokenizer.special_tokens
    stops.update(specials[m] for m in _END_OF_TURN if m in specials)
    return stops
