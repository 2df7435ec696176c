"""Looking up size presets (published architecture shapes) by name, with field overrides."""

from __future__ import annotations

import dataclasses

from ._config import DecoderConfig
from .errors import ConfigError

__all__ = ["preset_lookup"]


def preset_lookup(
    presets: dict[str, DecoderConfig], family: str, name: str, overrides: dict[str, object]
) -> DecoderConfig:
    """``presets[name]`` with ``overrides`` replaced (e.g. ``dtype="bfloat16"``).

    Raises:
        ConfigError: Unknown preset name (the message lists the known ones).
    """
    try:
        base = presets[name]
    except KeyError:
        raise ConfigError(f"unknown {family} preset {name!r} (known: {', '.join(sorted(presets))})") from None
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
