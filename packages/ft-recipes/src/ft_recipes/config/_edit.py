"""Command-line overrides and ``${...}`` interpolation of a config tree.

Overrides keep torchtune's surface: ``key.sub=value`` sets a value, ``~key`` deletes a key, and
``key=name`` on a node that holds a ``_component_`` swaps the component while keeping its keywords
(the strict schema check then reports any keyword the new component does not take).

A value's type follows what the key is declared as, because a shell hands over text and YAML would
turn parts of it into something else (``prompt=Reply with the date: 3 July 1999`` into a mapping,
``a # b`` into ``a``, ``yes`` into true, ``3.0`` into a float). For a key declared as text (``str``,
``str | None``, a path, a ``Literal`` of strings; by the recipe's schema or, inside a ``_component_``
node, by the callable's signature) the value is the text as written; a value that is one YAML quoted
scalar as a whole (``'"a: b"'``) is still unquoted, and for ``str | None`` an unquoted ``null`` / ``~``
is None. Any other key, or one whose type cannot be told, gets the value parsed as YAML (``lr=3e-4`` a
float, ``dims=[1,2]`` a list, ``name='3'`` a string). The declared type is looked up only when the two
readings differ, so most overrides never import a recipe or a component; the lookup itself is given
by the caller (:func:`ft_recipes.config.load_config` builds it from a schema).

Interpolation replaces ``${dotted.key}`` by that key's value (the value itself when the string is only
the reference, its text inside a longer string), ``${env:NAME}`` / ``${env:NAME,default}`` by an
environment variable; ``$${`` writes a literal ``${``. It runs after the overrides, so it applies to
text given on the command line too.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import yaml

from ft_recipes.config._load import ConfigLoader, Located, Where
from ft_recipes.errors import ConfigError, OverrideError

__all__ = [
    "COMPONENT",
    "RECIPE_KEY",
    "KindOf",
    "ValueKind",
    "apply_overrides",
    "dotted_keys",
    "get_dotted",
    "interpolate",
]

COMPONENT = "_component_"
# A config may name its recipe with this top-level key; it is not part of any recipe's schema.
RECIPE_KEY = "recipe"
# How an override's text becomes a value: kept as text, text or None (``str | None``), or parsed as YAML.
ValueKind = Literal["text", "text_or_null", "yaml"]
# The kind of a dotted key given the config tree as it stands (see ft_recipes.config._declared).
KindOf = Callable[[dict[str, Any], str], ValueKind]
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


_NOT_PARSED = object()
_NULLS = ("null", "Null", "NULL", "~")  # YAML's null, written alone and unquoted


def _quoted_scalar(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when the whole text is one YAML quoted scalar (``"a: b"`` or ``'a: b'``)."""
    if not text.lstrip().startswith(("'", '"')):
        return (False, None)
    try:
        tokens = [
            t
            for t in yaml.scan(text, Loader=ConfigLoader)
            if not isinstance(t, yaml.StreamStartToken | yaml.StreamEndToken)
        ]
    except yaml.YAMLError:
        return (False, None)
    if len(tokens) == 1 and isinstance(tokens[0], yaml.ScalarToken) and tokens[0].style in ("'", '"'):
        return (True, tokens[0].value)
    return (False, None)


def _parse_value(text: str, override: str, kind: Callable[[], ValueKind] | None) -> Any:
    """The value of one override: as text or as YAML, by the kind of its key (asked only if they differ)."""
    if text == "":
        raise OverrideError(f"override {override!r}: empty value; write key=null or key='\"\"'")
    quoted, unquoted = _quoted_scalar(text)
    as_text = unquoted if quoted else text
    try:
        parsed = yaml.load(text, Loader=ConfigLoader)
        problem = ""
    except yaml.YAMLError as exc:
        parsed, problem = _NOT_PARSED, str(exc).splitlines()[0]
    if isinstance(parsed, str) and parsed == as_text:
        return parsed  # both readings agree: no need to know the key's type
    chosen = kind() if kind is not None else "yaml"
    if chosen == "text_or_null" and text in _NULLS:
        return None
    if chosen in ("text", "text_or_null"):
        return as_text
    if parsed is _NOT_PARSED:
        raise OverrideError(f"override {override!r}: value is not valid YAML ({problem})")
    return parsed


def apply_overrides(cfg: Located, overrides: Sequence[str], kind_of: KindOf | None = None) -> Located:
    """Apply ``key=value`` and ``~key`` overrides in order (in place; returns ``cfg``).

    Args:
        cfg: The config tree to change.
        overrides: ``key=value`` / ``~key`` items, applied left to right.
        kind_of: The kind of a dotted key (text, text or null, YAML) given the tree so far, asked only
            for a value whose YAML reading differs from its text; None parses every value as YAML.

    Raises:
        OverrideError: Bad syntax, a deleted key that does not exist, or a path through a scalar.
    """
    for item in overrides:
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
        value = _parse_value(
            text, item, None if kind_of is None else functools.partial(kind_of, cfg.data, key)
        )
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
