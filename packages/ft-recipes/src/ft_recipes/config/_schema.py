"""Strict recipe schemas: a config must match its recipe's declared dataclasses exactly.

Each recipe declares its config as (nested) dataclasses. :func:`validate` walks the YAML tree against
them: an unknown key (with the closest valid name), a missing required key and a value of the wrong
type are errors naming the file, line and dotted key. Supported annotations: ``int``, ``float``
(ints accepted), ``bool``, ``str``, ``X | None``, ``Literal[...]``, ``list[X]``, ``dict[str, X]``,
``Any``, nested dataclasses, and :class:`Component` for a ``_component_`` node (whose keywords are
checked against the callable's signature by :func:`~ft_recipes.config.check_components`).

A bound is written into the annotation and checked after the type, so ``batch_size: 0`` or
``optimizer.betas: [0.9, 1.5]`` fails at ``tune validate`` time with the file, line, dotted key and the
bound (``optimizer.betas.1: must be in [0, 1), got 1.5``), not deep inside a run (or, worse, not at
all: a negative ``clip_grad_norm`` silently reverses every update). The bounds: :class:`AtLeast`
(``>=``), :class:`GreaterThan` (``>``), :class:`Interval` (closed or open at either end) and
:class:`Length` (a list's item count); the common ones are named (:data:`PositiveInt`,
:data:`NonNegativeInt`, :data:`PositiveFloat`, :data:`NonNegativeFloat`, :data:`Seed`). A numeric bound
also refuses NaN and infinities: no recipe setting means anything with them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from ft_recipes.config._edit import COMPONENT
from ft_recipes.config._load import Located
from ft_recipes.errors import ConfigError

__all__ = [
    "AtLeast",
    "Component",
    "GreaterThan",
    "Interval",
    "Length",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Seed",
    "validate",
]


class Component(dict):  # type: ignore[type-arg]
    """Annotation for a ``_component_`` node: a mapping with ``_component_`` and its keywords."""


def _num(x: float) -> str:
    """A bound as written: ints in full (a seed's 2**64 - 1), floats short (``1e-08``, ``0.5``)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _not_finite(value: float) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None


@dataclass(frozen=True)
class AtLeast:
    """``Annotated`` bound: the value must be ``>= minimum`` (and finite)."""

    minimum: float

    def problem(self, value: float) -> str | None:
        """Why ``value`` breaks the bound, or None when it keeps it."""
        if (bad := _not_finite(value)) is not None:
            return bad
        return None if value >= self.minimum else f"must be at least {_num(self.minimum)}, got {value!r}"


@dataclass(frozen=True)
class GreaterThan:
    """``Annotated`` bound: the value must be ``> minimum`` (and finite); for settings where the
    minimum itself would make the run do nothing (a zero learning rate) or divide by zero (``eps: 0``)."""

    minimum: float

    def problem(self, value: float) -> str | None:
        """Why ``value`` breaks the bound, or None when it keeps it."""
        if (bad := _not_finite(value)) is not None:
            return bad
        return None if value > self.minimum else f"must be greater than {_num(self.minimum)}, got {value!r}"


@dataclass(frozen=True)
class Interval:
    """``Annotated`` bound: the value must lie between ``low`` and ``high``, each end closed (the end
    itself allowed) unless ``low_open`` / ``high_open``; ``str()`` gives the usual notation, ``[0, 1)``."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{left}{_num(self.low)}, {_num(self.high)}{right}"

    def problem(self, value: float) -> str | None:
        """Why ``value`` breaks the bound, or None when it keeps it."""
        if (bad := _not_finite(value)) is not None:
            return bad
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return None if above and below else f"must be in {self}, got {value!r}"


@dataclass(frozen=True)
class Length:
    """``Annotated`` bound on a list: exactly ``items`` entries (Adam's two ``betas``)."""

    items: int

    def problem(self, value: list[Any]) -> str | None:
        """Why ``value`` breaks the bound, or None when it keeps it."""
        if len(value) == self.items:
            return None
        return f"must hold exactly {self.items} items, got {len(value)}: {value!r}"


_BOUNDS = (AtLeast, GreaterThan, Interval, Length)

PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
PositiveFloat = Annotated[float, GreaterThan(0)]
NonNegativeFloat = Annotated[float, AtLeast(0)]
# torch seeds its generators with an unsigned 64-bit value: larger ones end in an overflow inside torch,
# negative ones alias large ones.
Seed = Annotated[int, Interval(0, 2**64 - 1)]


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
            if isinstance(mark, _BOUNDS) and (problem := mark.problem(value)) is not None:
                raise _fail(cfg, key, problem)
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
