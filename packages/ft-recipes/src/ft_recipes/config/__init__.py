"""ft's config system: YAML with positions, overrides, interpolation, strict schemas, components.

The pipeline a command runs: :func:`load_config` (read YAML, apply ``key=value`` / ``~key``
overrides, each read as the type its key is declared with, then resolve ``${...}``), then :func:`validate` against the recipe's dataclass schema and
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
from ft_recipes.config._declared import SchemaSource, declared_type, override_kinds, value_kind
from ft_recipes.config._edit import (
    COMPONENT,
    RECIPE_KEY,
    KindOf,
    ValueKind,
    apply_overrides,
    dotted_keys,
    get_dotted,
    interpolate,
)
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
    "RECIPE_KEY",
    "SHORT_NAMES",
    "AtLeast",
    "Component",
    "GreaterThan",
    "Interval",
    "KindOf",
    "Length",
    "Located",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "SchemaSource",
    "Seed",
    "ValueKind",
    "Where",
    "apply_overrides",
    "check_components",
    "component_nodes",
    "declared_type",
    "dotted_keys",
    "get_dotted",
    "instantiate",
    "interpolate",
    "load_config",
    "load_yaml",
    "override_kinds",
    "parse_yaml_text",
    "resolve_component",
    "to_yaml",
    "validate",
    "value_kind",
]


def load_config(
    path: str | Path, overrides: Sequence[str] = (), *, schema: SchemaSource = None, allow_any: bool = False
) -> Located:
    """Read ``path``, apply ``overrides`` in order, then resolve interpolation.

    Args:
        path: The YAML file.
        overrides: ``key=value`` / ``~key`` items.
        schema: The recipe's schema dataclass (or a function of the config tree finding it, called only
            if an override needs it): a value given for a key it declares as text stays the text
            written. Keywords of ``_component_`` nodes are typed by the callable's signature either way;
            other keys without a schema parse as YAML.
        allow_any: Components outside ft, torch and bitsandbytes may be imported to type their keywords.

    Raises:
        UserError: Unreadable or invalid YAML, a bad override, a bad ``${...}`` reference.
    """
    kinds = override_kinds(schema, config_dir=Path(path).resolve().parent, allow_any=allow_any)
    return interpolate(apply_overrides(load_yaml(path), overrides, kinds))


def to_yaml(cfg: Located) -> str:
    """The config as YAML text, keys in their written order (what ``tune cat`` prints)."""
    import yaml

    return yaml.safe_dump(cfg.data, sort_keys=False, allow_unicode=True, default_flow_style=False)
