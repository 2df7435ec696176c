"""Reading YAML configs while remembering where each key was written.

PyYAML's composer gives every node its start mark; the values are built from the node tree here so
that each dotted key (``model.path``, ``optimizer.lr``, ``data.0.source``) keeps its file, line and
column. Later errors (unknown key, wrong type, bad component) then point at the exact spot. Duplicate
keys, which PyYAML silently resolves to the last one, are an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ft_recipes.errors import ConfigSyntaxError, MissingFileError

__all__ = ["ConfigLoader", "Located", "Where", "load_yaml", "parse_yaml_text"]


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads ``1e-3`` as a float (YAML 1.2), as configs write rates."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*)?\.?\d*[eE][-+]?\d+$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Where:
    """A position in a config file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line else self.file


@dataclass
class Located:
    """A config tree (plain dicts, lists and scalars) with the position of each dotted key."""

    data: dict[str, Any]
    file: str
    where: dict[str, Where] = field(default_factory=dict)

    def at(self, key: str) -> str:
        """``file:line:col`` of ``key`` (or of its closest written parent; the file for overrides)."""
        parts = key.split(".")
        while parts:
            found = self.where.get(".".join(parts))
            if found is not None:
                return str(found)
            parts.pop()
        return self.file


def _mark(file: str, node: yaml.Node) -> Where:
    return Where(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _build(node: yaml.Node, key: str, file: str, where: dict[str, Where], loader: yaml.SafeLoader) -> Any:
    if key and key not in where:
        where[key] = _mark(file, node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            name = loader.construct_object(knode)
            if not isinstance(name, str):
                raise ConfigSyntaxError(f"{_mark(file, knode)}: keys must be strings, got {name!r}")
            if "." in name:
                raise ConfigSyntaxError(f"{_mark(file, knode)}: key {name!r} contains a dot; nest it instead")
            if name in out:
                raise ConfigSyntaxError(
                    f"{_mark(file, knode)}: duplicate key {(key + '.' if key else '') + name!r}"
                )
            child = f"{key}.{name}" if key else name
            where[child] = _mark(file, knode)  # messages point at the key, not its value
            out[name] = _build(vnode, f"{key}.{name}" if key else name, file, where, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(v, f"{key}.{i}" if key else str(i), file, where, loader) for i, v in enumerate(node.value)
        ]
    return loader.construct_object(node)


def parse_yaml_text(text: str, file: str) -> Located:
    """Parse config text; ``file`` names it in messages.

    Raises:
        ConfigSyntaxError: Invalid YAML (with line and column), or a top level that is not a mapping.
    """
    loader = ConfigLoader(text)
    try:
        root = loader.get_single_node()
        where: dict[str, Where] = {}
        data = {} if root is None else _build(root, "", file, where, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigSyntaxError(f"{pos}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigSyntaxError(f"{file}: invalid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigSyntaxError(f"{file}:1:1: a config must be a mapping of keys, got {type(data).__name__}")
    return Located(data, file, where)


def load_yaml(path: str | Path) -> Located:
    """Read and parse one config file.

    Raises:
        MissingFileError: The file does not exist or cannot be read.
        ConfigSyntaxError: See :func:`parse_yaml_text`.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MissingFileError(f"{p}: cannot read config ({exc})") from None
    return parse_yaml_text(text, str(p))
