"""Command-line overrides and ``${...}`` interpolation of a config tree.

Overrides keep torchtune's surface: ``key.sub=value`` sets a value parsed as YAML (``lr=3e-4`` is a
float, ``dims=[1,2]`` a list, ``name='3'`` a string), ``~key`` deletes a key, and ``key=name`` on a
node that holds a ``_component_`` swaps the component while keeping its keywords (the strict schema
check then reports any keyword the new component does not take). Interpolation replaces
``${dotted.key}`` by that key's value (the value itself when the string is only the reference,
its text inside a longer string), ``${env:NAME}`` / ``${env:NAME,default}`` by an environment
variable; ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from ft_recipes.config._load import ConfigLoader, Located, Where
from ft_recipes.errors import ConfigError, OverrideError

__all__ = ["COMPONENT", "apply_overrides", "dotted_keys", "get_dotted", "interpolate"]

COMPONENT = "_component_"
_KEY = re.compile(r"^~?[A-Za-z_][\w-]*(\.[\w-]+)*$")
_REF = re.compile(r"(?<!\$)\$\{([^{}]*)\}")


def dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a tree (mappings and list indices), parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        yield key
        yield from dotted_keys(v, key)


def _step(node: Any, part: str) -> tuple[bool, Any]:
    if isinstance(node, dict):
        return (part in node, node.get(part))
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return (True, node[int(part)])
    return (False, None)


def get_dotted(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted key."""
    node: Any = data
    for part in key.split("."):
        found, node = _step(node, part)
        if not found:
            return (False, None)
    return (True, node)


def _suggest(key: str, data: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(dotted_keys(data)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parse_value(text: str, override: str) -> Any:
    if text == "":
        raise OverrideError(f'override {override!r}: empty value; write key=null or key=""')
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise OverrideError(f"override {override!r}: value is not valid YAML ({first})") from None


def apply_overrides(cfg: Located, overrides: Sequence[str]) -> Located:
    """Apply ``key=value`` and ``~key`` overrides in order (in place; returns ``cfg``).

    Raises:
        OverrideError: Bad syntax, a deleted key that does not exist, or a path through a scalar.
    """
    for _i, item in enumerate(overrides):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not _KEY.match(key) or (key.startswith("~") and eq) or (not key.startswith("~") and not eq):
            raise OverrideError(
                f"override {item!r}: expected key=value or ~key (dotted keys, e.g. optimizer.lr=1e-4)"
            )
        if key.startswith("~"):
            key = key[1:]
            found, _ = get_dotted(cfg.data, key)
            if not found:
                raise OverrideError(f"override {item!r}: no key {key!r} to delete{_suggest(key, cfg.data)}")
            parent_key, _, last = key.rpartition(".")
            parent = get_dotted(cfg.data, parent_key)[1] if parent_key else cfg.data
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
            continue
        value = _parse_value(text, item)
        _set(cfg.data, key, value, item)
        cfg.where[key] = Where(f"command-line override {item!r}", 0, 0)
        for sub in dotted_keys(value, key):
            cfg.where[sub] = cfg.where[key]
    return cfg


def _set(data: dict[str, Any], key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    node: Any = data
    for j, part in enumerate(parts[:-1]):
        if isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            where = ".".join(parts[: j + 1])
            raise OverrideError(f"override {item!r}: {where!r} is not a mapping or list index in the config")
    last = parts[-1]
    if isinstance(node, list):
        if not (last.isdigit() and int(last) < len(node)):
            raise OverrideError(f"override {item!r}: index {last!r} out of range for a list of {len(node)}")
        node[int(last)] = value
    elif not isinstance(node, dict):
        raise OverrideError(f"override {item!r}: parent of {last!r} is not a mapping")
    elif isinstance(node.get(last), dict) and COMPONENT in node[last] and isinstance(value, str):
        node[last][COMPONENT] = value  # swap the component, keep its keywords
    else:
        node[last] = value


def interpolate(cfg: Located) -> Located:
    """Resolve every ``${...}`` reference (in place; returns ``cfg``).

    Raises:
        ConfigError: A reference to a missing key or unset variable, or a reference cycle.
    """

    def resolve_str(text: str, key: str, stack: tuple[str, ...]) -> Any:
        whole = _REF.fullmatch(text)
        if whole:
            return lookup(whole.group(1).strip(), key, stack)

        def repl(m: re.Match[str]) -> str:
            value = lookup(m.group(1).strip(), key, stack)
            return "null" if value is None else str(value)

        return _REF.sub(repl, text).replace("$${", "${")

    def lookup(ref: str, key: str, stack: tuple[str, ...]) -> Any:
        if ref.startswith("env:"):
            name, _, default = ref[4:].partition(",")
            value = os.environ.get(name.strip())
            if value is None and not _:
                raise ConfigError(f"{cfg.at(key)}: {key}: environment variable {name.strip()!r} is not set")
            return value if value is not None else default.strip()
        if ref in stack:
            raise ConfigError(f"{cfg.at(key)}: {key}: interpolation cycle {' -> '.join((*stack, ref))}")
        found, value = get_dotted(cfg.data, ref)
        if not found:
            raise ConfigError(f"{cfg.at(key)}: {key}: ${{{ref}}} names no key{_suggest(ref, cfg.data)}")
        return walk(value, ref, (*stack, ref))

    def walk(node: Any, key: str, stack: tuple[str, ...]) -> Any:
        if isinstance(node, str) and "${" in node:
            return resolve_str(node, key, stack)
        if isinstance(node, dict):
            return {k: walk(v, f"{key}.{k}" if key else k, stack) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{key}.{i}", stack) for i, v in enumerate(node)]
        return node

    cfg.data = walk(cfg.data, "", ())
    return cfg
