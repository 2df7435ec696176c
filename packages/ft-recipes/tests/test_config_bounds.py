"""Bounds written into schema annotations: each refuses at validate time with file:line, key and bound.

Each case is checked both ways: the bounded schema refuses the bad values (and keeps the edge values
that the bound allows), while the same values under the bare type are accepted, so the refusal is the
bound's doing and not a type error; an interval closed where the bound is open (or the reverse) gives
the opposite verdict at the edge, so open and closed ends are really told apart.
"""

from __future__ import annotations

import dataclasses
import importlib
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

import pytest

from ft_recipes.config import (
    AtLeast,
    GreaterThan,
    Interval,
    Length,
    NonNegativeFloat,
    PositiveFloat,
    Seed,
    parse_yaml_text,
    validate,
)
from ft_recipes.errors import ConfigError
from ft_recipes.registry import RECIPES

ZeroToOneOpen = Annotated[float, Interval(0, 1, high_open=True)]  # [0, 1)
OpenToOne = Annotated[float, Interval(0, 1, low_open=True)]  # (0, 1]


def _schema(annotation: Any) -> type:
    """A one-field schema ``{value: annotation}``."""
    return dataclasses.make_dataclass("S", [("value", annotation)])


def _validate(annotation: Any, value: str) -> Any:
    cfg = parse_yaml_text(f"# a comment line\nvalue: {value}\n", "b.yaml")
    return validate(cfg, _schema(annotation)).value


# annotation, its bare type, values it keeps (YAML text), values it refuses -> the message's tail
CASES = [
    (PositiveFloat, float, ["1e-12", "3"], {"0": "must be greater than 0, got 0.0", "-1": "got -1.0"}),
    (NonNegativeFloat, float, ["0", "0.5"], {"-0.1": "must be at least 0, got -0.1"}),
    (ZeroToOneOpen, float, ["0", "0.999"], {"1": "must be in [0, 1), got 1.0", "-0.5": "got -0.5"}),
    (OpenToOne, float, ["1", "1e-9"], {"0": "must be in (0, 1], got 0.0", "1.5": "got 1.5"}),
    (Annotated[float, Interval(0, 1)], float, ["0", "1"], {"1.01": "must be in [0, 1], got 1.01"}),
    (Annotated[int, AtLeast(3)], int, ["3"], {"2": "must be at least 3, got 2"}),
    (Annotated[int, GreaterThan(3)], int, ["4"], {"3": "must be greater than 3, got 3"}),
    (Seed, int, ["0", str(2**64 - 1)], {"-1": "must be in [0, 18446744073709551615], got -1"}),
    (Seed, int, [], {str(2**64): f"got {2**64}"}),
    (PositiveFloat, float, [], {".nan": "must be a finite number, got nan", ".inf": "got inf"}),
    (ZeroToOneOpen, float, [], {".nan": "must be a finite number, got nan"}),
    (
        Annotated[list[int], Length(2)],
        list[int],
        ["[1, 2]"],
        {"[1]": "must hold exactly 2 items, got 1: [1]"},
    ),
    (Annotated[list[int], Length(2)], list[int], [], {"[1, 2, 3]": "got 3: [1, 2, 3]"}),
]


@pytest.mark.parametrize(("annotation", "bare", "good", "bad"), CASES)
def test_a_bound_keeps_its_range_and_refuses_the_rest(
    annotation: Any, bare: Any, good: list[str], bad: dict[str, str]
) -> None:
    for text in good:
        assert _validate(annotation, text) == _validate(bare, text)
    for text, tail in bad.items():
        with pytest.raises(ConfigError) as info:
            _validate(annotation, text)
        message = str(info.value)
        assert message.startswith("b.yaml:2:1: value: must "), message
        assert message.endswith(tail), message
        assert "\n" not in message
        # Wrong variant: without the bound the same value passes, so the refusal above is the bound's.
        _validate(bare, text)


def test_open_and_closed_ends_differ_at_the_edge() -> None:
    assert _validate(Annotated[float, Interval(0, 1)], "1") == 1.0
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\), got 1\.0$"):
        _validate(ZeroToOneOpen, "1")
    assert _validate(ZeroToOneOpen, "0") == 0.0
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\], got 0\.0$"):
        _validate(OpenToOne, "0")
    assert str(Interval(0, 1, low_open=True, high_open=True)) == "(0, 1)"
    assert str(Interval(1e-8, 0.5)) == "[1e-08, 0.5]"


@dataclass
class _Optim:
    betas: Annotated[list[ZeroToOneOpen], Length(2)] = field(default_factory=lambda: [0.9, 0.999])
    clip: PositiveFloat | None = 1.0


@dataclass
class _Run:
    optim: _Optim


def test_nested_bounds_name_the_item_and_its_line() -> None:
    text = textwrap.dedent(
        """\
        optim:
          betas: [0.9, 1.5]
        """
    )
    with pytest.raises(ConfigError) as info:
        validate(parse_yaml_text(text, "r.yaml"), _Run)
    assert str(info.value) == "r.yaml:2:16: optim.betas.1: must be in [0, 1), got 1.5"
    with pytest.raises(ConfigError) as info:
        validate(parse_yaml_text("optim:\n  betas: [0.9]\n", "r.yaml"), _Run)
    assert str(info.value) == "r.yaml:2:3: optim.betas: must hold exactly 2 items, got 1: [0.9]"
    # A bounded optional: null is off, a bad number names the bound (not "expected null").
    assert validate(parse_yaml_text("optim:\n  clip: null\n", "r.yaml"), _Run).optim.clip is None
    with pytest.raises(ConfigError, match=r"^r\.yaml:2:3: optim\.clip: must be greater than 0, got -1\.0$"):
        validate(parse_yaml_text("optim:\n  clip: -1\n", "r.yaml"), _Run)


_BOUNDS = (AtLeast, GreaterThan, Interval, Length)


def _numeric_fields(schema: type, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, annotation) of every field whose value is or holds an int or float, at any depth."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        yield from _numeric(f"{prefix}{f.name}", hints[f.name])


def _numeric(key: str, tp: Any) -> typing.Iterator[tuple[str, Any]]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base = typing.get_args(tp)[0]
        if base in (int, float):
            yield key, tp
        elif typing.get_origin(base) is list:
            yield from _numeric(f"{key}.N", typing.get_args(base)[0])
        return
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is not type(None):
                yield from _numeric(key, option)
        return
    if origin is list:
        yield from _numeric(f"{key}.N", typing.get_args(tp)[0])
        return
    if tp in (int, float):
        yield key, tp  # a bare number: no bound
        return
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        yield from _numeric_fields(tp, f"{key}.")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_number_of_every_shipped_recipe_schema_is_bounded(recipe: str) -> None:
    schema = importlib.import_module(RECIPES[recipe].module).Config
    found = dict(_numeric_fields(schema))
    assert found, f"{recipe}: no numeric field found; the walk is broken"
    unbounded = [
        key
        for key, tp in found.items()
        if typing.get_origin(tp) is not Annotated
        or not any(isinstance(m, _BOUNDS) for m in typing.get_args(tp)[1:])
    ]
    assert unbounded == [], f"{recipe}: numeric settings without a bound: {unbounded}"


def test_the_unbounded_field_finder_finds_a_bare_number() -> None:
    @dataclass
    class Loose:
        inner: _Optim
        rate: float = 0.1
        counts: list[int] = field(default_factory=list)

    # Wrong variant for the test above: bare numbers, also inside a list, are reported.
    found = dict(_numeric_fields(Loose))
    assert found["rate"] is float
    assert found["counts.N"] is int
    assert {"inner.betas.N", "inner.clip"} <= set(found)
