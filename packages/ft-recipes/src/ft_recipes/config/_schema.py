"""Strict recipe schemas: a config must match its recipe's declared dataclasses exactly.

Each recipe declares its config as (nested) dataclasses. :func:`validate` walks the YAML tree against
them: an unknown key (with the closest valid name), a missing required key and a value of the wrong
type are errors naming the file, line and dotted key. Supported annotations: ``int``, ``float``
(ints accepted), ``bool``, ``str``, ``X | None``, ``Literal[...]``, ``list[X]``, ``dict[str, X]``,
``Any``, nested dataclasses, and :class:`Component` for a ``_component_`` node (whose keywords are
checked against the callable's signature by :func:`~ft_recipes.config.check_components`). A bound is
written into the annotation, ``Annotated[int, AtLeast(1)]`` (:data:`PositiveInt`, :data:`NonNegativeInt`),
so ``batch_size: 0`` fails at ``tune validate`` time with the file and line, not deep inside a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from ft_recipes.config._edit import COMPONENT
from ft_recipes.config._load import Located
from ft_recipes.errors import ConfigError

__all__ = ["AtLeast", "Component", "NonNegativeInt", "PositiveInt", "validate"]


class Component(dict):  # type: ignore[type-arg]
    """Annotation for a ``_component_`` node: a mapping with ``_component_`` and its keywords."""


@dataclass(frozen=True)
class AtLeast:
    """``Annotated`` bound: the value must be ``>= minimum`` (checked after its type)."""

    minimum: float


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]


def _name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _name(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _name(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return "component" if tp is Component else tp.__name__
    return str(tp).replace("typing.", "")


def _fail(cfg: Located, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{cfg.at(key)}: {key}: {msg}")


def _check(cfg: Located, key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        value = _check(cfg, key, value, base)
        for mark in marks:
            if isinstance(mark, AtLeast) and value < mark.minimum:
                raise _fail(cfg, key, f"must be at least {mark.minimum:g}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(cfg, key, value, option)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(cfg, key, f"expected {_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _fail(cfg, key, f"{value!r} is not one of {', '.join(map(repr, choices))}{hint}")
        return value
    if tp is Component:
        if not isinstance(value, dict) or COMPONENT not in value:
            raise _fail(
                cfg, key, f"expected a mapping with {COMPONENT}, got {type(value).__name__} {value!r}"
            )
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _fail(cfg, key, f"expected a mapping, got {type(value).__name__} {value!r}")
        return _build(cfg, key, value, tp)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(cfg, key, f"expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(cfg, f"{key}.{i}", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(cfg, key, f"expected a mapping, got {type(value).__name__} {value!r}")
        _, item = typing.get_args(tp) or (str, Any)
        return {k: _check(cfg, f"{key}.{k}", v, item) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None) and value is None:
        return None
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _fail(cfg, key, f"expected {_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cfg: Located, prefix: str, data: dict[str, Any], schema: type) -> Any:
    hints = typing.get_type_hints(schema, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for name in data:
        if name not in fields:
            key = f"{prefix}.{name}" if prefix else name
            close = difflib.get_close_matches(name, list(fields), n=1)
            base = f"{prefix}." if prefix else ""
            hint = f"; did you mean {base}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise _fail(cfg, key, f"unknown key{hint}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{cfg.at(prefix) if prefix else cfg.file}: {key}: required key is missing")
            continue
        values[name] = _check(cfg, key, data[name], hints[name])
    return schema(**values)


def validate(cfg: Located, schema: type) -> Any:
    """An instance of the dataclass ``schema`` built from ``cfg.data``, or a :class:`ConfigError`."""
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    return _build(cfg, "", cfg.data, schema)
