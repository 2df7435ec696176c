"""Families by ``config.json`` ``model_type``: a new family adds its :class:`Family` here, nothing else.

``from_pretrained`` and :func:`build_model` dispatch on ``model_type`` through :data:`FAMILIES`; an
unsupported ``model_type`` is a :class:`ConfigError` listing the supported ones.
"""

from __future__ import annotations

from collections.abc import Callable

from ._attention import AttentionKernel
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._family import Family
from ._gemma2 import GEMMA2
from ._llama import LLAMA
from ._mistral import MISTRAL
from ._presets import preset_lookup
from ._qwen2 import QWEN2
from ._qwen3 import QWEN3
from .errors import ConfigError

__all__ = ["BUILDERS", "FAMILIES", "PRESETS", "build_model", "preset_config"]

FAMILIES: dict[str, Family] = {f.model_type: f for f in (LLAMA, QWEN2, QWEN3, MISTRAL, GEMMA2)}
BUILDERS: dict[str, Callable[..., CausalLM]] = {t: f.build for t, f in FAMILIES.items()}
PRESETS: dict[str, DecoderConfig] = {name: c for f in FAMILIES.values() for name, c in f.presets.items()}


def build_model(config: DecoderConfig, *, kernel: AttentionKernel | None = None) -> CausalLM:
    """Build the model for ``config.model_type`` with its family's builder (meta-device safe).

    Raises:
        ConfigError: Unsupported ``model_type`` (the message lists the supported ones).
    """
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ConfigError(
            f"model_type {config.model_type!r} is not supported (supported: {', '.join(sorted(FAMILIES))})"
        )
    return family.build(config, kernel=kernel)


def preset_config(name: str, **overrides: object) -> DecoderConfig:
    """Any family's size preset by name (``"qwen2.5-7b"``, ``"gemma2-9b"``), with fields replaced.

    Raises:
        ConfigError: Unknown preset name.
    """
    return preset_lookup(PRESETS, "model", name, overrides)
