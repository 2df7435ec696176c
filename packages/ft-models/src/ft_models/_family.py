"""A model family: its builder and how its ``config.json`` keys map to :class:`DecoderConfig`.

Each architecture module (``_llama.py``, ``_qwen2.py``, ...) declares one :class:`Family`; the registry
collects them by ``model_type``. Config parsing and writing in ``_config.py`` stay family-neutral: the
family's ``read`` turns its own keys (and the defaults transformers applies when a key is absent) into
:class:`DecoderConfig` fields, and ``write`` turns them back into its Hub-style keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import DecoderConfig
    from ._decoder import CausalLM

__all__ = ["Family", "no_keys"]


def no_keys(*_args: object) -> dict[str, Any]:
    """A ``read``/``write`` hook for families without keys of their own."""
    return {}


@dataclass(frozen=True)
class Family:
    """One ``model_type``.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        architecture: The transformers class written to ``architectures``.
        build: ``build(config, *, kernel=None) -> CausalLM`` (meta-device safe).
        read: ``read(config_dict, source) -> {DecoderConfig field: value}`` for this family's keys and
            defaults; it overrides the shared parse (e.g. ``head_dim`` defaults to 128 for Qwen3).
        write: ``write(config) -> {config.json key: value}`` added to the shared keys.
        drop_keys: Shared keys its transformers config does not have (not written).
        activations: Accepted ``hidden_act`` names.
        activation_key: The config.json key naming the activation (for error messages).
    """

    model_type: str
    architecture: str
    build: Callable[..., CausalLM]
    read: Callable[[dict[str, Any], str], dict[str, Any]] = no_keys
    write: Callable[[DecoderConfig], dict[str, Any]] = no_keys
    drop_keys: tuple[str, ...] = ()
    activations: tuple[str, ...] = ("silu",)
    activation_key: str = "hidden_act"
    presets: dict[str, DecoderConfig] = field(default_factory=dict)
