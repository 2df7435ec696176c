"""Recipes ``full_finetune_single_device`` and ``full_finetune_distributed``: every parameter trained, on
one device or sharded over several (FSDP2 / HSDP under torchrun).

``tune run full_finetune_single_device --config smollm2/135M_full``;
``tune run --nproc-per-node 8 full_finetune_distributed --config llama3_1/8B_full``. Both names run this
file: the setup and the loop serve every world size (``ft_recipes._distributed``). Flow: setup (device, precision,
model, data, optimizer, resume) -> train (accumulation windows with the token-normalised loss, clipping,
LR schedule, validation and checkpoints every N steps) -> save (an HF directory ``model/`` with the
tokenizer files and chat template, which transformers loads as is) -> cleanup.

Copy it with ``tune cp full_finetune_single_device ./my_full.py`` and change what you need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_recipes._progress import progress
from ft_recipes._train_config import (
    TRAINING_FILE_KEYS,
    TRAINING_PROVIDED,
    TrainingConfig,
)
from ft_recipes._training_setup import TrainingState

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as full_finetune_distributed too
PROVIDED = TRAINING_PROVIDED  # the keywords the shared setup passes itself
FILE_KEYS = TRAINING_FILE_KEYS


@dataclass
class Config(TrainingConfig):
    """Schema of a ``full_finetune_single_device`` config (every key is checked): the keys every training recipe shares
    (``TrainingConfig``, each number with its bound) plus ``packed``."""

    packed: bool = True


def before_run(cfg: Config) -> None:
    """Called by ``tune run`` before it writes anything: refuse a non-empty output dir without resume
    and a logger whose optional library is missing."""
    from ft_recipes._metrics import check_loggers
    from ft_recipes._train import check_output_dir

    check_output_dir(cfg.output_dir, cfg.resume)
    check_loggers(cfg.loggers)


def setup(cfg: Config) -> TrainingState:
    """The one training setup (``_training_setup.setup_training``: device and world, precision, data,
    the model streamed into its final form, attention -> activation checkpointing -> compile ->
    sharding -> optimizer -> schedule -> resume); this recipe's own part is its final form: the
    precision policy's storage dtypes, every parameter trained."""
    from ft_recipes._training_setup import setup_training
    from ft_recipes.training import apply_precision

    def final_form(policy: Any, world: Any) -> Any:
        return lambda model: apply_precision(model, policy, sharded=world.sharded)

    return setup_training(cfg, "full", final_form=final_form, trainable_only=False)


def train(run: TrainingState) -> None:
    """The loop, one optimizer step per accumulation window until ``total_steps`` (``_train.train``,
    the same for every training recipe: copy it here to change it for this recipe only)."""
    from ft_recipes import _train

    _train.train(run)


def save(run: TrainingState) -> None:
    """The trained model as an HF directory (``model/``) with its tokenizer files and chat template,
    written after the optimizer is released, one tensor at a time (sharded: gathered one parameter at
    a time, rank 0 writes)."""
    from ft_recipes import _train

    _train.release_optimizer(run)
    path = _train.save_hf_dir(run.model, run.tokenizer, Path(run.cfg.output_dir) / "model")
    if path is not None:
        progress(f"[full] model: {path}")


def main(cfg: Config) -> None:
    """setup -> train -> save -> cleanup (one rank's failure ends every rank, naming it)."""
    from ft_recipes import _distributed

    run = setup(cfg)
    with _distributed.together():
        train(run)
        save(run)
    del run  # cleanup: the model and loader worker processes go with it
    _distributed.finish()
