"""Overrides read as the type their key is declared with: text for text keys, YAML for the rest.

The expected values are the override texts themselves (what a user typed after ``key=``), or what YAML
1.2 defines for the non-text keys; the same overrides applied without knowing the types (plain YAML,
the old rule) are shown to give something else, so the tests can tell the two rules apart.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from ft_recipes.config import (
    Component,
    Located,
    apply_overrides,
    declared_type,
    interpolate,
    load_config,
    override_kinds,
    parse_yaml_text,
    validate,
    value_kind,
)
from ft_recipes.errors import ConfigError, OverrideError
from ft_recipes.runner import prepare


@dataclass
class Section:
    title: str | None = None
    count: int = 0


@dataclass
class Schema:
    model: Component
    prompt: str | None = None
    name: str = "n"
    mode: Literal["fast", "slow"] = "fast"
    where: Path | None = None
    lr: float = 0.1
    steps: int = 1
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    section: Section = field(default_factory=Section)
    extra: Section | None = None
    sections: list[Section] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    anything: Any = None


CONFIG = """\
model:
  _component_: parts.build
  source: s
prompt: null
name: n
tags: [a, b]
section: {title: t, count: 1}
sections:
  - {title: x}
labels: {k: v}
data:
  - {_component_: parts.build, source: d0}
  - {_component_: parts.build, source: d1, inner: {_component_: parts.other, source: 1}}
"""

PARTS = """
from pathlib import Path


def build(source: str | Path, n: int = 1, tag: str | None = None, inner: object = None, rate: float = 0.5):
    return (source, n, tag, inner, rate)


def other(source: int = 0, label: str = ""):
    return (source, label)
"""

# Text a shell hands over that YAML would turn into something else: a mapping, a truncated string, a
# list, a bool, a float, an int.
AWKWARD = [
    "Rewrite this date as YYYY-MM-DD. Reply with the date only: 3 July 1999",
    "keep # this",
    "a=b",
    "[draft",
    "[1, 2]",
    "yes",
    "3.0",
    "7",
    "{x: 1}",
]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    (tmp_path / "parts.py").write_text(PARTS)
    (tmp_path / "c.yaml").write_text(CONFIG)
    return tmp_path


def _apply(config_dir: Path, overrides: list[str], schema: Any = Schema) -> dict[str, Any]:
    return load_config(config_dir / "c.yaml", overrides, schema=schema).data


def _plain_yaml(config_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The old rule, for contrast: every value parsed as YAML whatever its key."""
    cfg = parse_yaml_text((config_dir / "c.yaml").read_text(), "c.yaml")
    return interpolate(apply_overrides(cfg, overrides)).data


@pytest.mark.parametrize("text", AWKWARD)
@pytest.mark.parametrize(
    ("key", "get"),
    [
        ("prompt", lambda d: d["prompt"]),  # str | None
        ("name", lambda d: d["name"]),  # str
        ("where", lambda d: d["where"]),  # Path | None
        ("tags.1", lambda d: d["tags"][1]),  # an item of list[str]
        ("section.title", lambda d: d["section"]["title"]),  # nested dataclass
        ("extra.title", lambda d: d["extra"]["title"]),  # Section | None, not in the file yet
        ("sections.0.title", lambda d: d["sections"][0]["title"]),  # list of dataclasses
        ("labels.k", lambda d: d["labels"]["k"]),  # dict[str, str]
        ("model.source", lambda d: d["model"]["source"]),  # component keyword: str | Path
        ("data.0.source", lambda d: d["data"][0]["source"]),  # a list of components
        ("data.1.inner.label", lambda d: d["data"][1]["inner"]["label"]),  # a component inside one
        ("model._component_", lambda d: d["model"]["_component_"]),
    ],
)
def test_a_text_key_gets_the_text_as_written(config_dir: Path, key: str, get: Any, text: str) -> None:
    assert get(_apply(config_dir, [f"{key}={text}"])) == text
    if text not in ("a=b", "[draft"):  # the old rule: YAML reads it as something else
        assert get(_plain_yaml(config_dir, [f"{key}={text}"])) != text


@pytest.mark.parametrize(
    ("item", "get", "expected"),
    [
        ("lr=3.0", lambda d: d["lr"], 3.0),
        ("lr=1e-4", lambda d: d["lr"], 1e-4),
        ("steps=7", lambda d: d["steps"], 7),
        ("flag=yes", lambda d: d["flag"], True),  # YAML 1.1's booleans, as before
        ("tags=[x, 'y: z']", lambda d: d["tags"], ["x", "y: z"]),
        ("section={title: u, count: 2}", lambda d: d["section"], {"title": "u", "count": 2}),
        ("section.count=5", lambda d: d["section"]["count"], 5),
        ("model.n=3", lambda d: d["model"]["n"], 3),  # component keyword: int
        ("model.rate=1e-3", lambda d: d["model"]["rate"], 1e-3),
        ("data.1.inner.source=3", lambda d: d["data"][1]["inner"]["source"], 3),  # other(source: int)
        ("anything=a: b", lambda d: d["anything"], {"a": "b"}),  # Any: YAML
        ("unknown=a: b", lambda d: d["unknown"], {"a": "b"}),  # not in the schema: YAML
        ("mode=slow", lambda d: d["mode"], "slow"),
    ],
)
def test_other_keys_parse_as_yaml(config_dir: Path, item: str, get: Any, expected: Any) -> None:
    value = get(_apply(config_dir, [item]))
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("item", "get", "expected"),
    [
        ('prompt="a: b"', lambda d: d["prompt"], "a: b"),  # one quoted scalar: unquoted, as YAML does
        ("prompt='a: b'", lambda d: d["prompt"], "a: b"),
        ("prompt='it''s'", lambda d: d["prompt"], "it's"),
        ('prompt="tab\\there"', lambda d: d["prompt"], "tab\there"),
        ("name='3'", lambda d: d["name"], "3"),
        ("prompt='a' and 'b'", lambda d: d["prompt"], "'a' and 'b'"),  # not one scalar: as written
        ("prompt=null", lambda d: d["prompt"], None),  # str | None: an unquoted null is None
        ("prompt=~", lambda d: d["prompt"], None),
        ("prompt='null'", lambda d: d["prompt"], "null"),
        ("name=null", lambda d: d["name"], "null"),  # str: no None to give, so the text
        ("model.tag=~", lambda d: d["model"]["tag"], None),  # component keyword str | None
        ("model.tag=null # x", lambda d: d["model"]["tag"], "null # x"),
        ("prompt= padded ", lambda d: d["prompt"], " padded "),
    ],
)
def test_quotes_and_null(config_dir: Path, item: str, get: Any, expected: Any) -> None:
    assert get(_apply(config_dir, [item])) == expected


def test_interpolation_still_applies_to_text(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_TEST_WHO", "you")
    data = _apply(config_dir, ["name=base", "prompt=${name}: ${env:FT_TEST_WHO} # 1", "model.source=$${x}"])
    assert data["prompt"] == "base: you # 1"
    assert data["model"]["source"] == "${x}"


def test_a_swapped_component_types_its_keywords_by_the_new_callable(config_dir: Path) -> None:
    data = _apply(config_dir, ["model=parts.other", "model.source=3.0"])
    assert data["model"] == {"_component_": "parts.other", "source": 3.0}  # other(source: int): YAML
    data = _apply(config_dir, ["model.source=3.0"])
    assert data["model"]["source"] == "3.0"  # build(source: str | Path): text


def test_bad_yaml_is_still_refused_where_the_key_is_not_text(config_dir: Path) -> None:
    assert _apply(config_dir, ["prompt=[1, 2"])["prompt"] == "[1, 2"
    with pytest.raises(OverrideError, match=r"override 'steps=\[1, 2': value is not valid YAML"):
        _apply(config_dir, ["steps=[1, 2"])
    with pytest.raises(OverrideError, match="empty value"):
        _apply(config_dir, ["prompt="])


def test_a_wrong_type_is_still_one_schema_error(config_dir: Path) -> None:
    cfg = load_config(config_dir / "c.yaml", ["lr=abc", "~data"], schema=Schema)
    with pytest.raises(
        ConfigError, match=r"^command-line override 'lr=abc': lr: expected float, got str 'abc'$"
    ):
        validate(cfg, Schema)


def test_the_schema_is_looked_up_only_when_the_readings_differ(config_dir: Path) -> None:
    calls: list[int] = []

    def schema(data: dict[str, Any]) -> type:
        calls.append(1)
        return Schema

    _apply(config_dir, ["prompt=hello", "name='q: r'", "model.source=plain", "~labels"], schema)
    assert calls == []  # YAML and text agree on every value: neither the schema nor parts.py is needed
    _apply(config_dir, ["steps=3", "lr=0.5", "prompt=a: b"], schema)
    assert calls == [1]  # once per config, however many overrides need it


def test_without_a_schema_only_component_keywords_are_typed(config_dir: Path) -> None:
    data = _apply(config_dir, ["prompt=a: b", "model.source=a: b"], schema=None)
    assert data["prompt"] == {"a": "b"}
    assert data["model"]["source"] == "a: b"


def test_a_component_that_cannot_be_imported_falls_back_to_yaml(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("m: {_component_: nowhere.build, source: s}\n")
    assert load_config(tmp_path / "c.yaml", ["m.source=a: b"]).data["m"]["source"] == {"a": "b"}


def test_declared_types_and_their_kinds(config_dir: Path) -> None:
    data = _apply(config_dir, [])
    found = {
        key: declared_type(Schema, data, key, config_dir=config_dir)
        for key in ("prompt", "steps", "tags.0", "section.title", "model.source", "model.n", "nope", "recipe")
    }
    assert found == {
        "prompt": str | None,
        "steps": int,
        "tags.0": str,
        "section.title": str | None,
        "model.source": str | Path,
        "model.n": int,
        "nope": Any,
        "recipe": str,
    }
    assert [value_kind(t) for t in found.values()] == [
        "text_or_null", "yaml", "text", "text_or_null", "text", "yaml", "yaml", "text",
    ]  # fmt: skip
    assert value_kind(Literal["a", "b"]) == "text"
    assert value_kind(Literal["a", 1]) == "yaml"
    assert value_kind(int | str) == "yaml"  # mixed: the value decides, so YAML


def test_override_kinds_for_a_located_tree() -> None:
    cfg: Located = parse_yaml_text(textwrap.dedent("prompt: null\nsteps: 1\n"), "c.yaml")
    apply_overrides(cfg, ["prompt=x: y", "steps=2"], override_kinds(Schema))
    assert cfg.data == {"prompt": "x: y", "steps": 2}


@pytest.mark.parametrize("recipe", ["generate", ""])
def test_a_misspelt_recipe_key_gets_did_you_mean(tmp_path: Path, recipe: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "recipr: generate\nmodel: {_component_: from_pretrained, path: m}\n"
        "tokenizer: {_component_: load_tokenizer, path: m}\n"
    )
    with pytest.raises(ConfigError, match=r"c\.yaml:1:1: recipr: unknown key; did you mean recipe\?$"):
        prepare(recipe, str(config), check_files=False)
    # The same wording as any other misspelt key of the schema.
    config.write_text(config.read_text().replace("recipr", "recipe") + "max_new_tokenz: 3\n")
    with pytest.raises(ConfigError, match=r"max_new_tokenz: unknown key; did you mean max_new_tokens\?$"):
        prepare(recipe, str(config), check_files=False)
