"""The recipe registry: recipe name -> module, shipped configs, distributed support.

Pure metadata, importable without torch, so ``tune ls`` and ``tune --help`` stay fast; a recipe's
module (which imports torch) is imported only when the recipe runs or its schema is needed. Shipped
configs live in the repository's top-level ``configs/`` and are packaged into the wheel as
``ft_recipes/_configs``; :func:`configs_root` finds whichever is present.
"""

from __future__ import annotations

import difflib
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ft_recipes.errors import MissingFileError, RecipeNotFoundError

__all__ = ["RECIPES", "RecipeInfo", "configs_root", "find_config", "find_recipe", "shipped_configs"]


@dataclass(frozen=True)
class RecipeInfo:
    """What the command line needs to know about a recipe before importing it.

    Attributes:
        name: Name used on the command line (``tune run NAME``).
        module: Dotted module holding ``Config`` (the schema dataclass) and ``main(cfg)``.
        summary: One line for ``tune ls``.
        distributed: Whether the recipe can run under ``torchrun`` on several processes.
        configs: Shipped config names (paths under ``configs/`` without ``.yaml``).
    """

    name: str
    module: str
    summary: str
    distributed: bool
    configs: tuple[str, ...]

    @property
    def file(self) -> Path:
        """The recipe's source file (found without importing it, for ``tune cp``)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise MissingFileError(f"recipe {self.name!r}: module {self.module} is not installed")
        return Path(spec.origin)


RECIPES: dict[str, RecipeInfo] = {
    info.name: info
    for info in (
        RecipeInfo(
            name="generate",
            module="ft_recipes.generate",
            summary="Generate from one prompt or chat interactively (HF dir, GGUF, training output, adapter)",
            distributed=False,
            configs=("smollm2/135M_generate",),
        ),
        RecipeInfo(
            name="eval",
            module="ft_recipes.eval",
            summary="Score greedy answers to prompt/answer JSONL items (exact match or your metric)",
            distributed=False,
            configs=("smollm2/135M_eval",),
        ),
        RecipeInfo(
            name="eleuther_eval",
            module="ft_recipes.eleuther_eval",
            summary="Score a model on lm-evaluation-harness tasks (lm-eval names, task YAMLs, local JSONL)",
            distributed=False,
            configs=("smollm2/135M_eleuther_eval",),
        ),
        RecipeInfo(
            name="lora_finetune_single_device",
            module="ft_recipes.lora_finetune_single_device",
            summary="LoRA / DoRA / QLoRA fine-tuning on one device (CPU or CUDA), exact resume",
            distributed=False,
            configs=(
                "smollm2/135M_lora_demo",
                "smollm2/135M_lora",
                "smollm2/135M_qlora",
                "smollm2/360M_lora",
                "smollm2/1.7B_lora",
                "smollm2/1.7B_qlora",
                "llama3_2/1B_lora",
                "llama3_2/1B_qlora",
                "llama3_2/3B_lora",
                "llama3_2/3B_qlora",
                "llama3_1/8B_lora",
                "llama3_1/8B_qlora",
                "qwen2_5/0.5B_lora",
                "qwen2_5/1.5B_lora",
                "qwen2_5/1.5B_qlora",
                "qwen2_5/3B_lora",
                "qwen2_5/3B_qlora",
                "qwen2_5/7B_lora",
                "qwen2_5/7B_qlora",
                "qwen3/0.6B_lora",
                "qwen3/1.7B_lora",
                "qwen3/1.7B_qlora",
                "qwen3/4B_lora",
                "qwen3/4B_qlora",
                "qwen3/8B_lora",
                "qwen3/8B_qlora",
                "mistral/7B_lora",
                "mistral/7B_qlora",
                "gemma2/2B_lora",
                "gemma2/2B_qlora",
                "gemma2/9B_lora",
                "gemma2/9B_qlora",
            ),
        ),
        RecipeInfo(
            name="lora_dpo_single_device",
            module="ft_recipes.lora_dpo_single_device",
            summary="DPO / IPO / hinge / robust / SimPO on a LoRA or QLoRA adapter, one device, exact resume",
            distributed=False,
            configs=("smollm2/135M_dpo_demo", "smollm2/135M_dpo"),
        ),
        RecipeInfo(
            name="full_finetune_single_device",
            module="ft_recipes.full_finetune_single_device",
            summary="Full fine-tuning on one device (CPU or CUDA), exact resume",
            distributed=False,
            configs=(
                "smollm2/135M_full",
                "smollm2/360M_full",
                "smollm2/1.7B_full",
                "llama3_2/1B_full",
                "llama3_2/3B_full",
                "qwen2_5/0.5B_full",
                "qwen2_5/1.5B_full",
                "qwen2_5/3B_full",
                "qwen3/0.6B_full",
                "qwen3/1.7B_full",
                "gemma2/2B_full",
            ),
        ),
        # The same recipe files at every world size (one setup, one loop): the distributed names are
        # what a torchrun launch names, and `tune cp` of either gives the same file.
        RecipeInfo(
            name="full_finetune_distributed",
            module="ft_recipes.full_finetune_single_device",
            summary="Full fine-tuning sharded over several processes/GPUs (FSDP2, HSDP), exact resume",
            distributed=True,
            configs=("llama3_1/8B_full",),
        ),
        RecipeInfo(
            name="lora_finetune_distributed",
            module="ft_recipes.lora_finetune_single_device",
            summary="LoRA / DoRA / QLoRA fine-tuning sharded over several processes/GPUs (FSDP2, HSDP)",
            distributed=True,
            configs=(
                "llama3_1/70B_lora",
                "llama3_1/70B_qlora",
                "qwen2_5/7B_lora_distributed",
                "qwen2_5/14B_lora",
                "qwen2_5/32B_lora",
                "qwen3/8B_lora_distributed",
                "qwen3/14B_lora",
                "qwen3/32B_lora",
            ),
        ),
        RecipeInfo(
            name="lora_dpo_distributed",
            module="ft_recipes.lora_dpo_single_device",
            summary="DPO / IPO / hinge / robust / SimPO on a LoRA or QLoRA adapter, sharded over several GPUs",
            distributed=True,
            configs=("llama3_1/8B_lora_dpo",),
        ),
        RecipeInfo(
            name="full_dpo_distributed",
            module="ft_recipes.full_dpo_distributed",
            summary="DPO / IPO / hinge / robust / SimPO of every parameter, sharded or on one device",
            distributed=True,
            configs=("llama3_1/8B_full_dpo", "smollm2/135M_full_dpo"),
        ),
    )
}


def configs_root() -> Path:
    """Directory of the shipped configs: inside the installed wheel, else the repository checkout."""
    packaged = Path(str(importlib.resources.files("ft_recipes") / "_configs"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[4] / "configs"


def shipped_configs() -> dict[str, Path]:
    """Shipped config name (``family/size_method``) -> file."""
    root = configs_root()
    if not root.is_dir():
        return {}
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def _suggest(name: str, names: list[str]) -> str:
    # The single closest name: with many shipped configs, a list of near misses reads as noise.
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def find_recipe(name: str) -> RecipeInfo:
    """The registered recipe called ``name``.

    Raises:
        RecipeNotFoundError: No such recipe (with close names; ``tune ls`` lists them all).
    """
    if name in RECIPES:
        return RECIPES[name]
    raise RecipeNotFoundError(f"unknown recipe {name!r}{_suggest(name, list(RECIPES))} (see `tune ls`)")


def find_config(name: str) -> Path:
    """A config file from a shipped name (``smollm2/135M_generate``) or a path to a YAML file.

    Raises:
        MissingFileError: A path (ends with ``.yaml``/``.yml``) that does not exist.
        RecipeNotFoundError: Neither a file nor a shipped name (with close names).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    key = name[:-5] if name.endswith(".yaml") else name
    if key in shipped:
        return shipped[key]
    if path.suffix in (".yaml", ".yml"):
        raise MissingFileError(f"{name}: config file not found{_suggest(key, list(shipped))}")
    raise RecipeNotFoundError(f"unknown config {name!r}{_suggest(key, list(shipped))} (see `tune ls`)")
