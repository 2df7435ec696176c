"""Config schemas shared by the training recipes (plain dataclasses, no torch: ``tune validate`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ft_recipes.config import Component, NonNegativeInt, PositiveInt

__all__ = [
    "CheckpointConfig",
    "EvalConfig",
    "LoggerName",
    "OptimizerConfig",
    "ScheduleConfig",
    "ValidationConfig",
    "WandbConfig",
]

LoggerName = Literal["jsonl", "tensorboard", "wandb"]


@dataclass
class OptimizerConfig:
    """``ft_recipes.training.build_optimizer`` options (``adamw``, ``sgd``, ``adamw8bit``, ...)."""

    name: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """LR schedule with linear warmup (``ft_recipes.training.build_lr_scheduler``)."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: float = 0.0


@dataclass
class CheckpointConfig:
    """Intermediate checkpoints: every ``every_n_steps`` optimizer steps (and at the end), keep ``keep_last``."""

    every_n_steps: PositiveInt | None = None
    keep_last: PositiveInt = 2


@dataclass
class EvalConfig:
    """Greedy evaluation (``ft_recipes.eval``) of prompt/answer JSONL items before and after training."""

    data: str
    metric: str = "exact_match"
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    before: bool = True


@dataclass
class ValidationConfig:
    """Validation loss every ``every_n_steps`` optimizer steps (and after the last one), without gradients.

    ``dataset`` is built like the training one (the recipe passes ``tokenizer`` and ``max_seq_len``);
    rows are read in order (no shuffle), packed as the training rows are. The loss is the sum of the
    cross-entropy over every trained token of the first ``max_batches`` batches (null: the whole split)
    divided by their count, the training loss's token normalisation.
    """

    dataset: Component
    every_n_steps: PositiveInt = 100
    max_batches: PositiveInt | None = None
    batch_size: PositiveInt | None = None  # null: the training batch_size


@dataclass
class WandbConfig:
    """Weights & Biases run options (``loggers: [..., wandb]``); ``WANDB_MODE=offline`` keeps it local."""

    project: str = "ft"
    name: str | None = None
