"""ft's config system: YAML with positions, overrides, interpolation, strict schemas, components.

The pipeline a command runs: :func:`load_config` (read YAML, apply ``key=value`` / ``~key``
overrides, resolve ``${...}``), then :func:`validate` against the recipe's dataclass schema and
:func:`check_components` on every ``_component_`` node, and finally :func:`instantiate` in the recipe.
Only PyYAML and the standard library are imported here; components are imported when checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ft_recipes.config._components import (
    SHORT_NAMES,
    check_components,
    component_nodes,
    instantiate,
    resolve_component,
)
from ft_recipes.config._edit import COMPONENT, apply_overrides, dotted_keys, get_dotted, interpolate
from ft_recipes.config._load import Located, Where, load_yaml, parse_yaml_text
from ft_recipes.config._schema import (
    AtLeast,
    Component,
    GreaterThan,
    Interval,
    Length,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    validate,
)

__all__ = [
    "COMPONENT",
    "SHORT_NAMES",
    "AtLeast",
    "Component",
    "GreaterThan",
    "Interval",
    "Length",
    "Located",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Seed",
    "Where",
    "apply_overrides",
    "check_components",
    "component_nodes",
    "dotted_keys",
    "get_dotted",
    "instantiate",
    "interpolate",
    "load_config",
    "load_yaml",
    "parse_yaml_text",
    "resolve_component",
    "to_yaml",
    "validate",
]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Located:
    """Read ``path``, apply ``overrides`` in order, then resolve interpolation."""
    return interpolate(apply_overrides(load_yaml(path), overrides))


def to_yaml(cfg: Located) -> str:
    """The config as YAML text, keys in their written order (what ``tune cat`` prints)."""
    import yaml

    return yaml.safe_dump(cfg.data, sort_keys=False, allow_unicode=True, default_flow_style=False)
