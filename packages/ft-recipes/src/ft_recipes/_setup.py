"""Shared setup steps of every recipe: device choice, the training model streamed into its final form,
model + tokenizer + adapter loading for inference, stop ids.

Precision ``auto`` is decided in one place, ``ft_recipes.training`` (``resolve_precision`` for
training, ``resolve_inference_precision`` for generation and evaluation); the end-of-turn markers are
ft-data's ``END_OF_TURN_MARKERS``, the list the chat templates' loss masks search too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

import ft_data
from ft_models import CausalLM
from ft_recipes._assets import resolve_path
from ft_recipes.config import COMPONENT, instantiate, resolve_component
from ft_recipes.errors import MissingFileError, UserError

__all__ = ["load_model", "load_model_and_tokenizer", "pick_device", "stop_token_ids"]


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' requested but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


def load_model(
    model_node: Mapping[str, Any],
    tokenizer: Any,
    device: torch.device,
    prepare: Callable[[CausalLM], object] | None = None,
    shard: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> CausalLM:
    """Build the model on the meta device, check the tokenizer fits it, let ``prepare`` give it its final
    form there (adapters, the precision policy's storage dtypes), then stream the checkpoint into that
    form on ``device``, one tensor at a time: no full-precision copy of the model is ever held.

    The model component (``from_pretrained``) receives ``dtype=float32`` (what parameters declare
    before ``prepare``), ``device`` and ``prepare``; a component that takes no ``prepare`` loads the
    whole model in fp32 and ``prepare`` runs on it afterwards (the memory of the older order).

    ``shard`` (a sharded run): each tensor leaving the meta device is passed through it, keeping only
    this rank's part (ft-models' ``Placement(shard=...)``), so no rank ever holds the whole model; a
    component without ``placement`` loads whole tensors and the sharding happens afterwards.

    Raises:
        UserError: The tokenizer has ids the model's embedding has no row for (found before any weight
            is read).
    """

    def checked(model: CausalLM) -> None:
        rows = model.model.embed_tokens.weight.shape[0]
        if tokenizer.vocab_size > rows:
            raise UserError(
                f"tokenizer: its largest id {tokenizer.vocab_size - 1} is not below the model's {rows} "
                "embedding rows"
            )
        if prepare is not None:
            prepare(model)

    if shard is not None and _takes(model_node, "placement"):
        from ft_models import Placement

        placed = Placement(device=device, shard=shard)
        model: CausalLM = instantiate(
            model_node, key="model", allow_any=True, dtype=torch.float32, placement=placed, prepare=checked
        )
    elif _takes(model_node, "prepare"):
        model = instantiate(
            model_node, key="model", allow_any=True, dtype=torch.float32, device=device, prepare=checked
        )
    else:  # a user's loader without `prepare`: load whole in fp32, then transform (the older order)
        model = instantiate(model_node, key="model", allow_any=True, dtype=torch.float32, device=device)
        checked(model)
    return model.train()


def _takes(model_node: Mapping[str, Any], name: str) -> bool:
    """Whether the model component accepts the keyword ``name`` (``from_pretrained`` takes ``prepare``
    and ``placement``; a user's loader may not)."""
    fn = resolve_component(model_node[COMPONENT], key="model", allow_any=True)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


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
