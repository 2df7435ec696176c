"""The type a dotted config key is declared with, so an override can be read as its key expects.

Two sources declare types: the recipe's schema (nested dataclasses, lists and mappings of them) and,
inside a ``_component_`` node, the signature of the callable it names (``model.path`` is the ``path``
keyword of ``from_pretrained``). The walk follows the config tree as it stands, so a component swapped
by an earlier override, a list of components (``data.0.source``) or a component nested in another one
is typed by what is there now. Anything that cannot be told (an unknown key, a component that cannot
be imported, an unannotated keyword) is ``Any``, and the override falls back to YAML.

Only the schema's annotations are read here; nothing is validated (``_schema`` does that, strictly,
after the overrides are applied).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union

from ft_recipes.config._edit import COMPONENT, RECIPE_KEY, KindOf, ValueKind
from ft_recipes.errors import UserError

__all__ = ["SchemaSource", "declared_type", "override_kinds", "value_kind"]

# The recipe's schema, or a function of the config tree that finds it (None: not known).
SchemaSource = type | Callable[[dict[str, Any]], type | None] | None

_TEXT_TYPES = (str, Path, PurePath, os.PathLike)


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` bounds."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> tuple[Any, ...]:
    """The members of a union (bounds stripped), or ``(tp,)``."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return tuple(_strip(a) for a in typing.get_args(tp))
    return (tp,)


def _is_text(tp: Any) -> bool:
    if typing.get_origin(tp) is Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(tp))
    base = typing.get_origin(tp) or tp  # os.PathLike[str] -> os.PathLike
    return isinstance(base, type) and issubclass(base, _TEXT_TYPES)


def value_kind(tp: Any) -> ValueKind:
    """``text`` when every member of ``tp`` is text (``str``, a path, a ``Literal`` of strings),
    ``text_or_null`` when None is allowed too, else ``yaml`` (numbers, lists, mixed or unknown types)."""
    members = _members(tp)
    values = [m for m in members if m is not type(None)]
    if not values or not all(_is_text(m) for m in values):
        return "yaml"
    return "text_or_null" if len(values) < len(members) else "text"


def _child(tp: Any, part: str) -> Any:
    """The declared type of ``part`` inside a value declared ``tp`` (schema side)."""
    candidates = [m for m in _members(tp) if m is not type(None)]
    if len(candidates) != 1:
        return Any  # X | Y: which one the value is depends on the value
    tp = candidates[0]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        if part not in fields:
            return Any
        try:
            return typing.get_type_hints(tp, include_extras=True)[part]
        except Exception:
            return Any
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, Sequence) and part.isdigit():
        return args[0] if args else Any
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return Any


def _step(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


class _Keywords:
    """Annotations of the keywords of component callables, resolved on first use and remembered."""

    def __init__(self, config_dir: Path | None, allow_any: bool) -> None:
        self.config_dir = config_dir
        self.allow_any = allow_any
        self.seen: dict[str, dict[str, Any]] = {}

    def of(self, name: Any, keyword: str) -> Any:
        if keyword == COMPONENT:
            return str
        if not isinstance(name, str):
            return Any
        if name not in self.seen:
            self.seen[name] = self._hints(name)
        return self.seen[name].get(keyword, Any)

    def _hints(self, name: str) -> dict[str, Any]:
        from ft_recipes.config._components import resolve_component

        try:
            fn = resolve_component(name, config_dir=self.config_dir, allow_any=self.allow_any)
            target = fn.__init__ if isinstance(fn, type) else fn  # type: ignore[misc]
            return typing.get_type_hints(target, include_extras=True)
        except UserError:
            return {}  # reported by check_components with its position
        except Exception:
            return {}  # unresolvable annotations: unknown, so YAML


def _walk(schema: type | None, data: dict[str, Any], key: str, keywords: _Keywords) -> Any:
    if key == RECIPE_KEY:
        return str
    tp: Any = Any if schema is None else schema
    node: Any = data
    for part in key.split("."):
        if isinstance(node, dict) and COMPONENT in node:
            tp = keywords.of(node[COMPONENT], part)
        else:
            tp = _child(tp, part)
        node = _step(node, part)
    return tp


def declared_type(
    schema: type | None,
    data: dict[str, Any],
    key: str,
    *,
    config_dir: Path | None = None,
    allow_any: bool = False,
) -> Any:
    """The declared type of dotted ``key`` in the config tree ``data``; ``Any`` when it cannot be told.

    Args:
        schema: The recipe's schema dataclass, or None (then only component keywords are typed).
        data: The config tree as it stands (its ``_component_`` nodes type their keywords).
        key: A dotted key (``optimizer.lr``, ``model.path``, ``data.0.source``).
        config_dir: Directory of the config (its modules may be named as components).
        allow_any: Resolve components outside ft, torch and bitsandbytes too.
    """
    return _walk(schema, data, key, _Keywords(config_dir, allow_any))


def override_kinds(
    schema: SchemaSource, *, config_dir: Path | None = None, allow_any: bool = False
) -> KindOf:
    """The ``kind_of`` of :func:`~ft_recipes.config.apply_overrides` for a recipe's schema.

    Args:
        schema: The schema dataclass, a function of the config tree returning it (called once, when the
            first override needs a type: a recipe module is imported only then), or None.
        config_dir: Directory of the config (its modules may be named as components).
        allow_any: Resolve components outside ft, torch and bitsandbytes too.
    """
    keywords = _Keywords(config_dir, allow_any)
    found: list[type | None] = []

    def kind_of(data: dict[str, Any], key: str) -> ValueKind:
        if not found:
            found.append(schema(data) if callable(schema) and not isinstance(schema, type) else schema)
        return value_kind(_walk(found[0], data, key, keywords))

    return kind_of
