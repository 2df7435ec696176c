"""From a recipe name and a config to a validated run: what ``tune run`` and ``tune validate`` do.

A recipe is a module (registered, or a user's ``.py`` file) with a ``Config`` dataclass (its strict
schema) and ``main(cfg)``; optionally ``DISTRIBUTED`` (may run under torchrun), ``PROVIDED`` (dotted
component key -> keywords the recipe passes itself) and ``FILE_KEYS`` (dotted keys holding paths that
must exist). A config may name its recipe with a top-level ``recipe:`` key, which ``tune validate``
uses and which is not part of the schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ft_recipes._assets import resolve_path
from ft_recipes.config import check_components, get_dotted, load_config, validate
from ft_recipes.config._load import Located
from ft_recipes.errors import ConfigError, MissingFileError, RecipeNotFoundError
from ft_recipes.registry import RECIPES, find_config, find_recipe

__all__ = ["Prepared", "load_recipe", "prepare", "recipe_for_config", "run"]

RECIPE_KEY = "recipe"


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


def recipe_for_config(config: str, cfg: Located | None = None) -> str:
    """The recipe a config belongs to: its ``recipe:`` key, else the registry's shipped list."""
    if cfg is not None and isinstance(cfg.data.get(RECIPE_KEY), str):
        return str(cfg.data[RECIPE_KEY])
    key = config[:-5] if config.endswith(".yaml") else config
    for info in RECIPES.values():
        if key in info.configs:
            return info.name
    raise RecipeNotFoundError(f"{config}: cannot tell its recipe; add `recipe: NAME` to it or pass --recipe")


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
    recipe: str | ModuleType,
    config: str,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    allow_any: bool = False,
    check_files: bool = True,
) -> Prepared:
    """Load, override, interpolate and strictly validate a config for a recipe; build nothing.

    Args:
        recipe: A recipe name, a ``.py`` path, or an imported recipe module.
        config: A shipped config name or a YAML path.
        overrides: ``key=value`` / ``~key`` items.
        allow_any: Allow components outside ft, torch and bitsandbytes.
        check_files: Missing files are errors (else they are returned as warnings).

    Raises:
        UserError: Any config problem (see :mod:`ft_recipes.errors`).
    """
    path = find_config(config)
    cfg = load_config(path, overrides)
    if recipe == "" or recipe is None:
        recipe = recipe_for_config(config, cfg)
    module = load_recipe(recipe) if isinstance(recipe, str) else recipe
    named = cfg.data.pop(RECIPE_KEY, None)
    if named is not None and not isinstance(named, str):
        raise ConfigError(f"{cfg.at(RECIPE_KEY)}: recipe: expected a recipe name, got {named!r}")
    instance = validate(cfg, module.Config)
    check_components(
        cfg, provided=getattr(module, "PROVIDED", {}), config_dir=path.resolve().parent, allow_any=allow_any
    )
    missing = _missing_files(cfg, tuple(getattr(module, "FILE_KEYS", ())))
    if missing and check_files:
        raise MissingFileError(missing[0])
    if named is not None:
        cfg.data = {RECIPE_KEY: named, **cfg.data}
    return Prepared(cfg, instance, module, missing)


def run(prepared: Prepared) -> None:
    """Call the module's ``before_run(cfg)`` if any, write the resolved config to the output directory
    (when the schema has one) and run ``main``.

    Under torchrun every rank validates and runs; only rank 0 writes the config.
    """
    from ft_recipes.config import to_yaml

    before = getattr(prepared.module, "before_run", None)
    if (
        before is not None
    ):  # e.g. a training recipe refusing a non-empty output dir, before anything is written
        before(prepared.config)
    out = getattr(prepared.config, "output_dir", None)
    if out:
        directory = Path(str(out)).expanduser()
        directory.mkdir(parents=True, exist_ok=True)  # every rank may write there
        if os.environ.get("RANK", "0") == "0":  # one writer under torchrun
            (directory / "config.yaml").write_text(to_yaml(prepared.cfg), encoding="utf-8")
    prepared.module.main(prepared.config)
