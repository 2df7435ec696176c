"""Shared setup steps of every recipe: device choice, model + tokenizer + adapter loading, stop ids.

Precision ``auto`` is decided in one place, ``ft_recipes.training`` (``resolve_precision`` for
training, ``resolve_inference_precision`` for generation and evaluation); the end-of-turn markers are
ft-data's ``END_OF_TURN_MARKERS``, the list the chat templates' loss masks search too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import ft_data
from ft_models import CausalLM
from ft_recipes._assets import resolve_path
from ft_recipes.config import instantiate
from ft_recipes.errors import MissingFileError, UserError

__all__ = ["load_model_and_tokenizer", "pick_device", "stop_token_ids"]


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' requested but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


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
    """EOS plus every end-of-turn marker of ``ft_data.END_OF_TURN_MARKERS`` that the tokenizer has as a
    special token: generation stops where a chat turn ends, whatever the model's chat format."""
    stops = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    specials = tokenizer.special_tokens
    stops.update(specials[m] for m in ft_data.END_OF_TURN_MARKERS if m in specials)
    return stops
