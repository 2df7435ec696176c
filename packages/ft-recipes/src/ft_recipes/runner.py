"""From a recipe name and a config to a validated run: what ``tune run``, ``validate``, ``cat`` and
``data inspect`` do.

A recipe is a module (registered, or a user's ``.py`` file) with a ``Config`` dataclass (its strict
schema) and ``main(cfg)``; optionally ``DISTRIBUTED`` (may run under torchrun), ``PROVIDED`` (dotted
component key -> keywords the recipe passes itself) and ``FILE_KEYS`` (dotted keys holding paths that
must exist). A config may name its recipe with a top-level ``recipe:`` key, which ``tune validate``
uses and which is not part of the schema.

Every command reads a config through :func:`load_recipe_config`, so an override means the same thing
everywhere: typed by the recipe's schema when the recipe can be told. :func:`run` writes the resolved
config to ``output_dir/config.yaml`` only once the recipe's setup has succeeded (the recipe calls
:func:`write_resolved_config` at the end of its setup; otherwise ``run`` writes it after ``main``), so a
run refused at setup leaves a previous run's ``config.yaml`` as it was.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ft_recipes._assets import resolve_path
from ft_recipes.config import RECIPE_KEY, Located, check_components, get_dotted, load_config, validate
from ft_recipes.errors import ConfigError, MissingFileError, RecipeNotFoundError
from ft_recipes.registry import RECIPES, find_config, find_recipe

__all__ = [
    "Prepared",
    "load_recipe",
    "load_recipe_config",
    "prepare",
    "recipe_for_config",
    "run",
    "write_resolved_config",
]


def load_recipe(name: str) -> ModuleType:
    """Import a registered recipe by name, or a user's recipe from a ``.py`` path.

    Raises:
        RecipeNotFoundError: Unknown name, or a file without ``Config`` and ``main``.
        MissingFileError: A ``.py`` path that does not exist.
    """
    if name.endswith(".py") or "/" in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise MissingFileError(f"{name}: recipe file not found")
        module_name = f"ft_user_recipe_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise RecipeNotFoundError(f"{name}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and type hints look the module up
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(find_recipe(name).module)
    for attr in ("Config", "main"):
        if not hasattr(module, attr):
            raise RecipeNotFoundError(f"{name}: a recipe must define `{attr}` (see `tune cp generate`)")
    return module


def _misspelt_recipe_key(data: dict[str, Any], valid: Iterable[str]) -> str | None:
    """A top-level key that is not valid and is closest to ``recipe``: the schema's "did you mean" for it."""
    names = [*valid, RECIPE_KEY]
    for name in data:
        if name not in names and difflib.get_close_matches(name, names, n=1) == [RECIPE_KEY]:
            return name
    return None


def _unknown_recipe_key(cfg: Located, name: str) -> ConfigError:
    return ConfigError(f"{cfg.at(name)}: {name}: unknown key; did you mean {RECIPE_KEY}?")


def _recipe_name(config: str, data: dict[str, Any]) -> str | None:
    if isinstance(data.get(RECIPE_KEY), str):
        return str(data[RECIPE_KEY])
    key = config[:-5] if config.endswith(".yaml") else config
    for info in RECIPES.values():
        if key in info.configs:
            return info.name
    return None


def recipe_for_config(config: str, cfg: Located | None = None) -> str:
    """The recipe a config belongs to: its ``recipe:`` key, else the registry's shipped list.

    Raises:
        ConfigError: No ``recipe:`` key but one spelt close to it (``recipr:``).
        RecipeNotFoundError: The recipe cannot be told.
    """
    name = _recipe_name(config, cfg.data if cfg is not None else {})
    if name is not None:
        return name
    misspelt = _misspelt_recipe_key(cfg.data, ()) if cfg is not None else None
    if cfg is not None and misspelt is not None:
        raise _unknown_recipe_key(cfg, misspelt)
    raise RecipeNotFoundError(f"{config}: cannot tell its recipe; add `recipe: NAME` to it or pass --recipe")


def load_recipe_config(
    config: str,
    overrides: Sequence[str] = (),
    *,
    recipe: str | ModuleType | None = None,
    allow_any: bool = False,
) -> Located:
    """Read a config and apply ``overrides`` typed by its recipe's schema, then resolve ``${...}``.

    The recipe is ``recipe`` when given, else the config's ``recipe:`` key, else the one the registry
    ships the config with; it is imported only if an override's YAML reading differs from its text
    (so ``tune cat`` stays cheap). When the recipe cannot be told or imported, overrides of keys outside
    ``_component_`` nodes parse as YAML, and a later validation reports the recipe problem itself.

    Args:
        config: A shipped config name or a YAML path.
        overrides: ``key=value`` / ``~key`` items.
        recipe: A recipe name, a ``.py`` path or an imported recipe module.
        allow_any: Components outside ft, torch and bitsandbytes may be imported to type their keywords.

    Raises:
        UserError: The config cannot be found or read, or an override is malformed.
    """
    path = find_config(config)

    def schema(data: dict[str, Any]) -> type | None:
        name = recipe or _recipe_name(config, data)
        if not name:
            return None
        try:
            module = name if isinstance(name, ModuleType) else load_recipe(name)
        except Exception:
            return None  # reported by prepare() with its own message; a `tune cat` still prints
        schema_type = getattr(module, "Config", None)
        return schema_type if isinstance(schema_type, type) else None

    return load_config(path, overrides, schema=schema, allow_any=allow_any)


@dataclass
class Prepared:
    """A validated config: the raw tree, the schema instance and any warnings."""

    cfg: Located
    config: Any
    module: ModuleType
    warnings: list[str] = field(default_factory=list)


def _missing_files(cfg: Located, keys: tuple[str, ...]) -> list[str]:
    missing = []
    for key in keys:
        found, value = get_dotted(cfg.data, key)
        if not found or value is None:
            continue
        try:
            path = resolve_path(value)
        except MissingFileError as exc:
            missing.append(f"{cfg.at(key)}: {key}: {exc}")
            continue
        if not path.exists():
            missing.append(f"{cfg.at(key)}: {key}: {value}: file not found")
    return missing


def prepare(
    recipe: str | ModuleType | None,
    config: str,
    overrides: Sequence[str] = (),
    *,
    allow_any: bool = False,
    check_files: bool = True,
) -> Prepared:
    """Load, override, interpolate and strictly validate a config for a recipe; build nothing.

    Args:
        recipe: A recipe name, a ``.py`` path, an imported recipe module, or ``""`` / None for the
            config's own (see :func:`recipe_for_config`).
        config: A shipped config name or a YAML path.
        overrides: ``key=value`` / ``~key`` items.
        allow_any: Allow components outside ft, torch and bitsandbytes.
        check_files: Missing files are errors (else they are returned as warnings).

    Raises:
        UserError: Any config problem (see :mod:`ft_recipes.errors`).
    """
    find_config(config)  # an unknown config is reported before the recipe
    module = recipe if isinstance(recipe, ModuleType) else load_recipe(recipe) if recipe else None
    cfg = load_recipe_config(config, overrides, recipe=module, allow_any=allow_any)
    if module is None:
        module = load_recipe(recipe_for_config(config, cfg))
    named = cfg.data.pop(RECIPE_KEY, None)
    if named is not None and not isinstance(named, str):
        raise ConfigError(f"{cfg.at(RECIPE_KEY)}: recipe: expected a recipe name, got {named!r}")
    schema = module.Config
    if dataclasses.is_dataclass(schema):
        misspelt = _misspelt_recipe_key(cfg.data, (f.name for f in dataclasses.fields(schema) if f.init))
        if misspelt is not None:
            raise _unknown_recipe_key(cfg, misspelt)
    instance = validate(cfg, schema)
    config_dir = Path(cfg.file).resolve().parent
    check_components(
        cfg, provided=getattr(module, "PROVIDED", {}), config_dir=config_dir, allow_any=allow_any
    )
    missing = _missing_files(cfg, tuple(getattr(module, "FILE_KEYS", ())))
    if missing and check_files:
        raise MissingFileError(missing[0])
    if named is not None:
        cfg.data = {RECIPE_KEY: named, **cfg.data}
    return Prepared(cfg, instance, module, missing)


@dataclass
class _Resolved:
    """The resolved config of the run in progress, and whether it has been written."""

    text: str
    written: bool = False


_RESOLVED: ContextVar[_Resolved | None] = ContextVar("ft_recipes_resolved_config", default=None)


def write_resolved_config(output_dir: str | os.PathLike[str]) -> Path | None:
    """Write the resolved config of the run in progress to ``output_dir/config.yaml``, atomically.

    A recipe calls it as the last step of its setup, so a run refused earlier (a bad ``resume`` path, a
    model that does not load) leaves the previous run's ``config.yaml`` as it was; a reader never sees
    a torn file. Only rank 0 writes (``RANK``, as torchrun sets it). Outside :func:`run` (a recipe's
    ``setup`` called from Python) there is no resolved config and nothing is written.

    Returns:
        The file written, or None (not under :func:`run`, or not rank 0).
    """
    resolved = _RESOLVED.get()
    if resolved is None:
        return None
    resolved.written = True
    if os.environ.get("RANK", "0") != "0":
        return None
    import ft_dist

    directory = Path(output_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return ft_dist.write_atomic(directory / "config.yaml", resolved.text.encode("utf-8"))


def run(prepared: Prepared) -> None:
    """Call the module's ``before_run(cfg)`` if any, then ``main``; the resolved config reaches
    ``output_dir/config.yaml`` (when the schema has one) through :func:`write_resolved_config`, which the
    recipe calls once its setup succeeded, or after ``main`` returns if the recipe never did.

    Under torchrun every rank validates and runs; only rank 0 writes the config.
    """
    from ft_recipes.config import to_yaml

    before = getattr(prepared.module, "before_run", None)
    if before is not None:  # e.g. a training recipe refusing a non-empty output dir, before anything
        before(prepared.config)
    out = getattr(prepared.config, "output_dir", None)
    if out:
        Path(str(out)).expanduser().mkdir(parents=True, exist_ok=True)  # every rank may write there
    resolved = _Resolved(to_yaml(prepared.cfg))
    token = _RESOLVED.set(resolved)
    try:
        prepared.module.main(prepared.config)
        if out and not resolved.written:
            write_resolved_config(str(out))
    finally:
        _RESOLVED.reset(token)
