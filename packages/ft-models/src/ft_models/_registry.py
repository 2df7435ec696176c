"""Builders by ``config.json`` ``model_type``: a new family adds its builder here, nothing else changes."""

from __future__ import annotations

from collections.abc import Callable

from ._attention import AttentionKernel
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._llama import build_llama

__all__ = ["BUILDERS", "build_model"]

BUILDERS: dict[str, Callable[..., CausalLM]] = {"llama": build_llama}


def build_model(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build the model for ``config.model_type`` with its registered builder (meta-device safe)."""
    return BUILDERS[config.model_type](config, kernel=kernel)
