"""The config system: positions, overrides, interpolation, strict schemas and components."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from ft_recipes.config import (
    Component,
    NonNegativeInt,
    PositiveInt,
    apply_overrides,
    check_components,
    instantiate,
    interpolate,
    load_config,
    parse_yaml_text,
    validate,
)
from ft_recipes.errors import ComponentError, ConfigError, ConfigSyntaxError, OverrideError


def _cfg(text: str, file: str = "c.yaml") -> object:
    return parse_yaml_text(textwrap.dedent(text), file)


def test_yaml_error_names_line_and_column() -> None:
    # The second colon of line 2 (column 5) starts a mapping where a plain scalar was being read.
    with pytest.raises(
        ConfigSyntaxError, match=r"^bad\.yaml:2:5: invalid YAML: mapping values are not allowed"
    ):
        _cfg("a: 1\nb: c: d\n", "bad.yaml")


def test_duplicate_key_is_an_error_with_its_position() -> None:
    with pytest.raises(ConfigSyntaxError, match=r"c\.yaml:3:3: duplicate key 'm\.x'"):
        _cfg("m:\n  x: 1\n  x: 2\n")


def test_positions_of_nested_keys_and_list_items() -> None:
    cfg = _cfg("top: 1\nm:\n  x: 1\n  items:\n    - a\n    - b\n")
    assert cfg.at("m.x") == "c.yaml:3:3"  # the key, not its value
    assert cfg.at("m.items.1") == "c.yaml:6:7"
    assert cfg.at("m.nope") == "c.yaml:2:1"  # an absent key points at its closest written parent


def test_overrides_are_yaml_typed_delete_and_nest() -> None:
    cfg = _cfg("a: 1\nopt:\n  lr: 0.1\nname: x\nl: [1, 2]\n")
    apply_overrides(cfg, ["a=3e-4", "opt.betas=[0.9, 0.95]", "name='3'", "~l", "new.deep=true", "a=null"])
    assert cfg.data == {
        "a": None,
        "opt": {"lr": 0.1, "betas": [0.9, 0.95]},
        "name": "3",
        "new": {"deep": True},
    }
    apply_overrides(cfg, ["opt.lr=1e-3"])
    assert cfg.data["opt"]["lr"] == pytest.approx(1e-3)
    assert isinstance(cfg.data["opt"]["lr"], float)
    assert "override 'opt.lr=1e-3'" in cfg.at("opt.lr")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr", "expected key=value or ~key"),
        ("=3", "expected key=value or ~key"),
        ("~lr=3", "expected key=value or ~key"),
        ("~nope", "no key 'nope' to delete"),
        ("~opt.lrr", "did you mean 'opt.lr'"),
        ("a.b=1", "parent of 'b' is not a mapping"),
        ("opt.lr=[1,", "not valid YAML"),
        ("opt.lr=", "empty value"),
    ],
)
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        apply_overrides(_cfg("a: 1\nopt:\n  lr: 0.1\n"), [item])


def test_swapping_a_component_keeps_its_keywords() -> None:
    cfg = _cfg("opt:\n  _component_: SGD\n  lr: 0.1\n")
    apply_overrides(cfg, ["opt=torch.optim.AdamW"])
    assert cfg.data["opt"] == {"_component_": "torch.optim.AdamW", "lr": 0.1}


def test_interpolation_keeps_types_and_formats_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_TEST_ROOT", "/data")
    cfg = _cfg(
        """
        out: ${env:FT_TEST_ROOT}/runs
        steps: 4
        total: ${steps}
        name: run-${steps}
        missing_env: ${env:FT_TEST_UNSET_VAR, fallback}
        nested: {ref: "${out}/ckpt"}
        literal: $${steps}
        """
    )
    assert interpolate(cfg).data == {
        "out": "/data/runs",
        "steps": 4,
        "total": 4,
        "name": "run-4",
        "missing_env": "fallback",
        "nested": {"ref": "/data/runs/ckpt"},
        "literal": "${steps}",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: ${b}\nb: ${a}\n", "interpolation cycle"),
        ("a: ${stepz}\nsteps: 1\n", r"c\.yaml:1:1: a: \$\{stepz\} names no key; did you mean 'steps'"),
        ("a: ${env:FT_TEST_UNSET_VAR}\n", "environment variable 'FT_TEST_UNSET_VAR' is not set"),
    ],
)
def test_bad_interpolation(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        interpolate(_cfg(text))


@dataclass
class Optim:
    lr: float
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Schema:
    optim: Optim
    mode: Literal["fast", "exact"] = "fast"
    steps: PositiveInt = 1
    every: PositiveInt | None = None
    workers: NonNegativeInt = 0
    name: str | None = None
    model: Component | None = None


def test_schema_builds_typed_instances() -> None:
    out = validate(_cfg("optim:\n  lr: 1\nmode: exact\nsteps: 3\n"), Schema)
    assert out == Schema(optim=Optim(lr=1.0), mode="exact", steps=3)
    # Bounds are inclusive and a bounded optional still takes null.
    assert validate(_cfg("optim:\n  lr: 1\nsteps: 1\nevery: null\nworkers: 0\n"), Schema).steps == 1
    assert isinstance(out.optim.lr, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim:\n  lr: 1\nstep: 3\n", r"c\.yaml:3:1: step: unknown key; did you mean steps\?"),
        (
            "optim:\n  lr: 1\n  betaz: [1]\n",
            r"c\.yaml:3:3: optim\.betaz: unknown key; did you mean optim\.betas\?",
        ),
        ("optim:\n  lr: fast\n", r"c\.yaml:2:3: optim\.lr: expected float, got str 'fast'"),
        ("optim:\n  lr: 1\nsteps: true\n", "steps: expected int, got bool True"),
        ("optim:\n  lr: 1\nmode: exakt\n", "'exakt' is not one of 'fast', 'exact'; did you mean 'exact'"),
        ("optim:\n  lr: 1\n  betas: [0.9, x]\n", r"optim\.betas\.1: expected float"),
        ("mode: fast\n", "optim: required key is missing"),
        ("optim: {}\n", r"optim\.lr: required key is missing"),
        ("optim:\n  lr: 1\nmodel: {lr: 1}\n", "model: expected a mapping with _component_"),
        ("optim:\n  lr: 1\nsteps: 0\n", r"c\.yaml:3:1: steps: must be at least 1, got 0"),
        ("optim:\n  lr: 1\nevery: -2\n", r"c\.yaml:3:1: every: must be at least 1, got -2"),
        ("optim:\n  lr: 1\nevery: 1.5\n", r"every: expected int, got float 1\.5"),
        ("optim:\n  lr: 1\nworkers: -1\n", "workers: must be at least 0, got -1"),
    ],
)
def test_schema_errors_name_file_line_key_and_suggestion(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(_cfg(text), Schema)


def test_component_keywords_checked_recursively() -> None:
    good = _cfg(
        """
        net:
          _component_: torch.nn.TransformerEncoder
          num_layers: 1
          encoder_layer: {_component_: torch.nn.TransformerEncoderLayer, d_model: 8, nhead: 2, dropout: 0.0}
        """
    )
    check_components(good)
    bad = _cfg(
        """
        opt:
          _component_: SGD
          lr: 0.1
          momentm: 0.9
        """
    )
    with pytest.raises(
        ComponentError,
        match=r"c\.yaml:5:3: opt\.momentm: 'SGD' takes no keyword 'momentm'; did you mean opt\.momentum\?",
    ):
        check_components(bad, provided={"opt": {"params"}})
    nested = _cfg(
        """
        model:
          _component_: torch.nn.TransformerEncoder
          num_layers: 2
          encoder_layer:
            _component_: torch.nn.TransformerEncoderLayer
            d_model: 8
            nhead: 2
            dropuot: 0.0
        """
    )
    with pytest.raises(
        ComponentError,
        match=r"model\.encoder_layer\.dropuot: .* did you mean model\.encoder_layer\.dropout\?",
    ):
        check_components(nested)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (
            "_component_: from_pretrained\n  path: 3",
            r"c\.yaml:3:3: x\.path: 'from_pretrained' expects str, got int 3",
        ),
        (
            "_component_: torch.nn.Linear\n  in_features: 3\n  out_features: 2.5",
            "out_features: .* expects int, got float",
        ),
        (
            "_component_: torch.nn.Linear\n  in_features: 3\n  out_features: 2\n  bias: 1",
            "bias: .* expects bool, got int 1",
        ),
        ("_component_: load_tokenizer\n  path: [a]", None),  # not a simple value: left to the callable
        ("_component_: torch.nn.Linear\n  in_features: 3\n  out_features: 2\n  bias: false", None),
    ],
)
def test_component_values_checked_against_simple_annotations(node: str, message: str | None) -> None:
    cfg = _cfg(f"x:\n  {node}\n")
    if message is None:
        check_components(cfg, provided={"x": {"dtype", "device"}})
        return
    with pytest.raises(ComponentError, match=message):
        check_components(cfg, provided={"x": {"dtype", "device"}})


def test_missing_required_keyword_unless_the_recipe_provides_it() -> None:
    cfg = _cfg("opt:\n  _component_: torch.optim.SGD\n  lr: 0.1\n")
    with pytest.raises(ComponentError, match="needs keyword 'params'"):
        check_components(cfg)
    check_components(cfg, provided={"opt": {"params"}})


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("SGDD", "unknown component 'SGDD'; did you mean 'SGD'"),
        ("torch.optim.AdamX", "has no attribute 'AdamX'; did you mean torch.optim.Adam"),
        ("ft_models.nonexistent_mod.thing", "has no attribute"),
        (
            "json.loads",
            "outside ft, torch, bitsandbytes and the config's directory; pass --allow-any-component",
        ),
        ("torch.__version__", "is not callable"),
    ],
)
def test_bad_components(target: str, message: str) -> None:
    with pytest.raises(ComponentError, match=message):
        check_components(_cfg(f"x:\n  _component_: {target}\n"))


def test_allow_any_opt_in_and_modules_beside_the_config(tmp_path: Path) -> None:
    check_components(_cfg("x:\n  _component_: json.dumps\n  obj: 1\n"), allow_any=True)
    (tmp_path / "my_parts_xyz.py").write_text("def double(value: int) -> int:\n    return 2 * value\n")
    (tmp_path / "c.yaml").write_text("x:\n  _component_: my_parts_xyz.double\n  value: 21\n")
    cfg = load_config(tmp_path / "c.yaml")
    check_components(cfg, config_dir=tmp_path)
    assert instantiate(cfg.data["x"], config_dir=tmp_path) == 42
    with pytest.raises(ComponentError, match="outside ft"):
        check_components(cfg, config_dir=tmp_path / "elsewhere")


def test_instantiate_builds_nested_components_and_recipe_arguments_win() -> None:
    cfg = _cfg(
        """
        opt:
          _component_: SGD
          lr: 0.5
          momentum: 0.9
        layer:
          _component_: torch.nn.Sequential
        """
    )
    lin = torch.nn.Linear(3, 2)
    opt = instantiate(cfg.data["opt"], lin.parameters(), lr=0.25)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.25
    assert opt.param_groups[0]["momentum"] == 0.9
    enc = instantiate(
        {
            "_component_": "torch.nn.TransformerEncoder",
            "num_layers": 2,
            "encoder_layer": {"_component_": "torch.nn.TransformerEncoderLayer", "d_model": 8, "nhead": 2},
        }
    )
    assert isinstance(enc.layers[0], torch.nn.TransformerEncoderLayer)
    assert len(enc.layers) == 2
