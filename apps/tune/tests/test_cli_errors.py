"""Every user mistake gives one line on stderr and exit status 2, without a traceback (runner and subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from tune_support import run_tune

from ft_tune.cli import main

GOOD = """\
recipe: generate
model:
  _component_: from_pretrained
  path: {path}
tokenizer:
  _component_: load_tokenizer
  path: ${{model.path}}
prompt: hi
max_new_tokens: 2
"""


@pytest.fixture
def configs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "good_missing_files": GOOD.format(path=tmp_path / "no_such_model.gguf"),
        "bad_yaml": "model:\n  path: [a, b\nprompt: x\n",
        "unknown_key": GOOD.format(path="x.gguf") + "max_new_tokenz: 3\n",
        "bad_component": GOOD.format(path="x.gguf").replace("load_tokenizer", "ft_data.load_tokenizr"),
        "foreign_component": GOOD.format(path="x.gguf").replace("load_tokenizer", "json.loads"),
        "bad_keyword": GOOD.format(path="x.gguf").replace("  path: ${model.path}", "  paht: ${model.path}"),
    }
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(text)
    return out


# (arguments, a fragment the one-line message must contain); {name} is replaced by that config's path.
CASES = [
    (
        ["run", "generat", "--config", "smollm2/135M_generate"],
        "unknown recipe 'generat'; did you mean generate?",
    ),
    (
        ["cat", "smollm2/135M_generat"],
        "unknown config 'smollm2/135M_generat'; did you mean smollm2/135M_generate?",
    ),
    (["cat", "missing_dir/nothing.yaml"], "missing_dir/nothing.yaml: config file not found"),
    (["cat", "{bad_yaml}"], "bad_yaml.yaml:3:7: invalid YAML"),
    (
        ["cat", "smollm2/135M_generate", "max_new_tokens"],
        "override 'max_new_tokens': expected key=value or ~key",
    ),
    (["cat", "smollm2/135M_generate", "~nope"], "no key 'nope' to delete"),
    (
        ["validate", "{unknown_key}"],
        "unknown_key.yaml:10:1: max_new_tokenz: unknown key; did you mean max_new_tokens?",
    ),
    (["validate", "smollm2/135M_generate", "precision=fp8"], "'fp8' is not one of"),
    (
        ["validate", "smollm2/135M_generate", "max_new_tokens=many"],
        "max_new_tokens: expected int, got str 'many'",
    ),
    (
        ["validate", "{bad_component}"],
        "'ft_data' has no attribute 'load_tokenizr'; did you mean ft_data.load_tokenizer?",
    ),
    (["validate", "{foreign_component}"], "pass --allow-any-component"),
    (
        ["validate", "{bad_keyword}"],
        "tokenizer.paht: 'load_tokenizer' takes no keyword 'paht'; did you mean tokenizer.path?",
    ),
    (["validate", "{good_missing_files}", "--check-files"], "model.path: "),
    (["run", "generate", "--config", "{good_missing_files}"], "no_such_model.gguf: file not found"),
    (
        ["run", "generate", "--config", "smollm2/135M_generate", "--nproc-per-node", "2"],
        "recipe 'generate' runs on a single device; remove --nproc-per-node",
    ),
    (
        ["run", "no_such_recipe.py", "--config", "smollm2/135M_generate"],
        "no_such_recipe.py: recipe file not found",
    ),
    (["cp", "smollm2/135M_generat", "x.yaml"], "did you mean smollm2/135M_generate?"),
]


def _args(args: list[str], configs: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in configs.items()}) if "{" in a else a for a in args]


@pytest.mark.parametrize(
    ("args", "fragment"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)]
)
def test_user_errors_in_process(args: list[str], fragment: str, configs: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, _args(args, configs))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [CASES[1], CASES[3], CASES[4], CASES[6], CASES[13], CASES[14]],
    ids=["unknown-config", "bad-yaml", "bad-override", "unknown-key", "missing-file", "distributed"],
)
def test_user_errors_in_a_real_process(args: list[str], fragment: str, configs: dict[str, Path]) -> None:
    out = run_tune(*_args(args, configs))
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert fragment in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_the_traceback(configs: dict[str, Path]) -> None:
    out = run_tune("--debug", "validate", str(configs["unknown_key"]))
    assert out.returncode != 0
    assert "Traceback (most recent call last)" in out.stderr
    assert "ConfigError" in out.stderr


def test_validate_warns_about_missing_files_without_check_files(configs: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["validate", str(configs["good_missing_files"])])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr
    assert "no_such_model.gguf" in result.stderr
    assert result.stdout.strip().endswith("valid")


def test_click_usage_errors_exit_2() -> None:
    result = CliRunner().invoke(main, ["run", "generate"])
    assert result.exit_code == 2
    assert "Missing option '--config'" in result.output
