"""``_component_`` nodes: resolving, checking and instantiating them.

A component node is a mapping whose ``_component_`` names a callable, either by a registered short
name (``AdamW``, ``from_pretrained``) or by a dotted path (``torch.optim.SGD``, ``my_data.build``);
its other keys are keyword arguments, and may themselves be component nodes (instantiated first,
depth first). Dotted paths are restricted to ft's packages, torch and bitsandbytes plus modules that
sit beside the config file, because a config is data and should not import arbitrary code by
default; ``allow_any=True`` (``--allow-any-component``) lifts the restriction.

:func:`check_components` inspects each callable's signature without calling it, so ``tune validate``
reports a keyword a component does not take, at any depth, before any model is built.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

from ft_recipes._assets import ASSET_PREFIX, resolve_path
from ft_recipes.config._edit import COMPONENT
from ft_recipes.config._load import Located
from ft_recipes.errors import ComponentError

__all__ = ["SHORT_NAMES", "check_components", "component_nodes", "instantiate", "resolve_component"]

# Short names usable as `_component_`; the value is the dotted path they stand for.
SHORT_NAMES: dict[str, str] = {
    "from_pretrained": "ft_models.from_pretrained",
    "load_tokenizer": "ft_data.load_tokenizer",
    "build_dataset": "ft_data.build_dataset",
    "build_preference_dataset": "ft_data.build_preference_dataset",
    "apply_lora": "ft_peft.apply_lora",
    "QuantConfig": "ft_peft.QuantConfig",
    "AdamW": "torch.optim.AdamW",
    "Adam": "torch.optim.Adam",
    "SGD": "torch.optim.SGD",
}
_ALLOWED_TOP = ("torch", "bitsandbytes")


def _allowed(top: str, config_dir: Path | None) -> bool:
    if top.startswith("ft_") or top in _ALLOWED_TOP:
        return True
    return config_dir is not None and ((config_dir / f"{top}.py").is_file() or (config_dir / top).is_dir())


def resolve_component(
    name: Any,
    *,
    key: str = COMPONENT,
    where: str = "",
    config_dir: Path | None = None,
    allow_any: bool = False,
) -> Callable[..., Any]:
    """The callable a ``_component_`` value names.

    Args:
        name: A short name from :data:`SHORT_NAMES` or a dotted path ``package.module.attr``.
        key: Dotted key of the node (for messages).
        where: ``file:line:col`` of the node (for messages).
        config_dir: Directory of the config; modules there may be named.
        allow_any: Allow dotted paths outside ft, torch and bitsandbytes.

    Raises:
        ComponentError: Unknown short name, disallowed or unimportable path, not callable.
    """
    at = f"{where}: {key}" if where else key
    if not isinstance(name, str) or not name:
        raise ComponentError(f"{at}: _component_ must be a name or dotted path, got {name!r}")
    path = SHORT_NAMES.get(name, name)
    if "." not in path:
        close = difflib.get_close_matches(name, list(SHORT_NAMES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; use a dotted path like package.module.name"
        raise ComponentError(f"{at}: unknown component {name!r}{hint}")
    top = path.split(".")[0]
    if not allow_any and not _allowed(top, config_dir):
        raise ComponentError(
            f"{at}: component {path!r} is outside ft, torch, bitsandbytes and the config's directory; "
            "pass --allow-any-component to import it"
        )
    if config_dir is not None and str(config_dir) not in sys.path and _allowed(top, config_dir):
        sys.path.insert(0, str(config_dir))
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # this prefix is not a module; try a shorter one
            raise ComponentError(f"{at}: importing {module_name!r} failed: {exc}") from None
        except Exception as exc:
            raise ComponentError(
                f"{at}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(parts[cut], public, n=1)
            hint = f"; did you mean {module_name}.{close[0]}?" if close else ""
            raise ComponentError(
                f"{at}: {module_name!r} has no attribute {'.'.join(parts[cut:])!r}{hint}"
            ) from None
        if not callable(obj):
            raise ComponentError(f"{at}: {path!r} is not callable")
        return obj  # type: ignore[no-any-return]
    raise ComponentError(f"{at}: cannot import {path!r}: no such module")


def component_nodes(node: Any, key: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(dotted_key, node)`` holding a ``_component_``, outer nodes first."""
    if isinstance(node, dict):
        if COMPONENT in node:
            yield key, node
        for k, v in node.items():
            yield from component_nodes(v, f"{key}.{k}" if key else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from component_nodes(v, f"{key}.{i}")


def _check_signature(
    fn: Callable[..., Any], node: Mapping[str, Any], key: str, cfg: Located, provided: set[str]
) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check statically
    params = sig.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [
        n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
    ]
    for name in node:
        if name == COMPONENT or takes_any or name in named:
            continue
        close = difflib.get_close_matches(name, named, n=1)
        hint = (
            f"; did you mean {key}.{close[0]}?"
            if close
            else f"; it takes {', '.join(named) or 'no keywords'}"
        )
        raise ComponentError(
            f"{cfg.at(f'{key}.{name}')}: {key}.{name}: {node[COMPONENT]!r} takes no keyword {name!r}{hint}"
        )
    _check_values(fn, node, key, cfg)
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (
            p.POSITIONAL_OR_KEYWORD,
            p.KEYWORD_ONLY,
        )
        if required and name not in node and name not in provided:
            raise ComponentError(
                f"{cfg.at(key)}: {key}: {node[COMPONENT]!r} needs keyword {name!r}, which is missing"
            )


# Annotations whose YAML values can be checked statically; anything else is left to the callable.
_SIMPLE: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    bool: (bool,),
    str: (str,),
    type(None): (type(None),),
    Path: (str,),
    os.PathLike: (str,),
}


def _accepted(annotation: Any) -> tuple[type, ...] | None:
    """YAML value types an annotation accepts, or None when it is not made of simple types only."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else ()
    parts = options or (annotation,)
    out: list[type] = []
    for part in parts:
        base = typing.get_origin(part) or part
        if base not in _SIMPLE:
            return None
        out.extend(_SIMPLE[base])
    return tuple(out)


def _check_values(fn: Callable[..., Any], node: Mapping[str, Any], key: str, cfg: Located) -> None:
    """Literal keyword values against simple annotations (``path: 3`` where a path is expected)."""
    try:
        hints = typing.get_type_hints(getattr(fn, "__init__") if isinstance(fn, type) else fn)  # noqa: B009
    except Exception:
        return  # unresolvable annotations: nothing to check statically
    for name, value in node.items():
        accepted = _accepted(hints[name]) if name in hints else None
        if accepted is None or isinstance(value, dict | list):
            continue
        if isinstance(value, str) and value.startswith(ASSET_PREFIX) and str in accepted:
            continue
        wrong_bool = isinstance(value, bool) and bool not in accepted
        if wrong_bool or not isinstance(value, accepted):
            names = " | ".join(dict.fromkeys(t.__name__ if t is not type(None) else "None" for t in accepted))
            raise ComponentError(
                f"{cfg.at(f'{key}.{name}')}: {key}.{name}: {node[COMPONENT]!r} expects {names}, "
                f"got {type(value).__name__} {value!r}"
            )


def check_components(
    cfg: Located,
    *,
    provided: Mapping[str, set[str]] | None = None,
    config_dir: Path | None = None,
    allow_any: bool = False,
) -> None:
    """Import every component of ``cfg`` and check its keywords against its signature, at every depth.

    Args:
        cfg: The resolved config.
        provided: Dotted key -> keywords the recipe passes itself at instantiation (not required in YAML).
        config_dir: Directory whose modules may be named.
        allow_any: Allow dotted paths outside ft, torch and bitsandbytes.

    Raises:
        ComponentError: The first bad component, naming file, line and dotted key.
    """
    for key, node in component_nodes(cfg.data):
        at = cfg.at(key)
        fn = resolve_component(node[COMPONENT], key=key, where=at, config_dir=config_dir, allow_any=allow_any)
        _check_signature(fn, node, key, cfg, set((provided or {}).get(key, ())))


def _build(node: Any, config_dir: Path | None, allow_any: bool, key: str) -> Any:
    if isinstance(node, dict):
        if COMPONENT in node:
            return instantiate(node, config_dir=config_dir, allow_any=allow_any, key=key)
        return {k: _build(v, config_dir, allow_any, f"{key}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_build(v, config_dir, allow_any, f"{key}.{i}") for i, v in enumerate(node)]
    if isinstance(node, str) and node.startswith(ASSET_PREFIX):
        return str(resolve_path(node))
    return node


def instantiate(
    node: Mapping[str, Any],
    *args: Any,
    config_dir: Path | None = None,
    allow_any: bool = False,
    key: str = "",
    **kwargs: Any,
) -> Any:
    """Call the component of ``node`` with its keys (nested components built first) plus ``kwargs``.

    ``asset://`` strings among the values become real paths. Positional ``args`` and ``kwargs`` come
    from the recipe (a model's parameters for an optimizer, a dtype); ``kwargs`` win over YAML keys.

    Raises:
        ComponentError: The component cannot be resolved (see :func:`resolve_component`).
    """
    if COMPONENT not in node:
        raise ComponentError(f"{key or 'config'}: not a component node (no _component_ key)")
    fn = resolve_component(node[COMPONENT], key=key or COMPONENT, config_dir=config_dir, allow_any=allow_any)
    values = {k: _build(v, config_dir, allow_any, f"{key}.{k}") for k, v in node.items() if k != COMPONENT}
    return fn(*args, **{**values, **kwargs})
