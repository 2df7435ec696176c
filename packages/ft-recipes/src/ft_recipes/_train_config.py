"""Config schemas shared by the training recipes (plain dataclasses, no torch: ``tune validate`` reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ft_recipes.config import (
    Component,
    Interval,
    Length,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
)

__all__ = [
    "TRAINING_FILE_KEYS",
    "TRAINING_PROVIDED",
    "AttentionName",
    "Beta",
    "CheckpointConfig",
    "EvalConfig",
    "LocalTask",
    "LoggerName",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "ValidationConfig",
    "WandbConfig",
]

# What the shared training setup (``_training_setup``) passes to the config's components itself, and the
# keys holding paths that `tune run` checks before anything starts: the same for every training recipe.
TRAINING_PROVIDED = {
    "model": {"dtype", "device", "prepare", "placement"},
    "dataset": {"tokenizer", "max_seq_len"},
    "validation.dataset": {"tokenizer", "max_seq_len"},
}
TRAINING_FILE_KEYS = ("model.path", "tokenizer.path", "dataset.source", "validation.dataset.source")

LoggerName = Literal["jsonl", "tensorboard", "wandb"]
# The attention kernels a recipe may name (ft_models.ATTENTION_KERNELS, spelled here so that reading a schema
# never imports torch; a test asserts the two agree). See ft_recipes.training.apply_attention.
AttentionName = Literal["auto", "sdpa", "grouped", "eager"]
# An Adam moment decay rate: 0 keeps no history (allowed, as torch allows it); 1 would never forget the
# first gradient and divides by zero in the bias correction (1 - beta**t).
Beta = Annotated[float, Interval(0, 1, high_open=True)]


@dataclass
class OptimizerConfig:
    """``ft_recipes.training.build_optimizer`` options (``adamw``, ``sgd``, ``adamw8bit``, ...).

    Attributes:
        name: The optimizer.
        lr: Peak learning rate, > 0: zero trains nothing while still writing a "trained" model, and a
            negative rate climbs the loss.
        weight_decay: >= 0; zero turns decay off, a negative one grows every weight each step.
        betas: Adam's two moment decay rates, exactly two, each in [0, 1) (see :data:`Beta`).
        eps: Adam's denominator term, > 0: with zero, a parameter whose gradient is zero gets 0 / 0.
    """

    name: str = "adamw"
    lr: PositiveFloat = 2e-4
    weight_decay: NonNegativeFloat = 0.0
    betas: Annotated[list[Beta], Length(2)] = field(default_factory=lambda: [0.9, 0.999])
    eps: PositiveFloat = 1e-8


@dataclass
class ScheduleConfig:
    """LR schedule with linear warmup (``ft_recipes.training.build_lr_scheduler``).

    Attributes:
        kind: The decay after warmup.
        warmup_steps: >= 0 (zero: start at the peak).
        min_lr_ratio: The decay's floor as a fraction of the peak, in [0, 1]: above 1 the "decay" would
            raise the rate, below 0 it would turn negative.
    """

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: NonNegativeInt = 0
    min_lr_ratio: Annotated[float, Interval(0, 1)] = 0.0


@dataclass
class CheckpointConfig:
    """Intermediate checkpoints: every ``every_n_steps`` optimizer steps (and at the end), keep ``keep_last``.

    Both are >= 1: an interval of zero steps means nothing (null: only the final checkpoint), and
    keeping zero checkpoints would delete the one just written, leaving nothing to resume from.

    ``async_save``: write each checkpoint in the background (``ft_dist.save_checkpoint_async``): the
    state is copied to host memory, then training goes on while a thread writes the files; the
    checkpoint is complete (marked, named ``step_N``) only once every rank's write finished. At most one
    save is in flight: the next save and the end of training wait for it, and a failed write stops the
    run there with the last complete checkpoint kept. Costs one extra host copy of what is saved.
    """

    every_n_steps: PositiveInt | None = None
    keep_last: PositiveInt = 2
    async_save: bool = False


@dataclass
class LocalTask:
    """An lm-eval task from a JSONL file in ft's schema (see ``ft_recipes._lm_eval_tasks``).

    Attributes:
        name: The task's name in the results.
        data: The JSONL file.
        until: Generation rows: stop strings (the answer is the text before the first one).
        max_gen_toks: Generation rows: most new tokens (>= 1).
    """

    name: str
    data: str
    until: list[str] = field(default_factory=lambda: ["\n"])
    max_gen_toks: PositiveInt = 64


@dataclass
class EvalConfig:
    """Evaluation of the model being trained, before and after training: greedy exact match on
    prompt/answer JSONL items (``data``, ``ft_recipes.eval``) and/or lm-evaluation-harness tasks
    (``tasks``, ``local_tasks``, ``include_path``, as in ``eleuther_eval``; extra ``ft-recipes[lm-eval]``).

    ``batch_size`` and ``max_new_tokens`` are >= 1: an empty batch or an answer of no tokens scores
    nothing. ``data`` and the tasks must exist before the run starts (the recipe checks them).
    """

    data: str | None = None
    metric: str = "exact_match"
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt = 32
    before: bool = True
    tasks: list[str] = field(default_factory=list)
    local_tasks: list[LocalTask] = field(default_factory=list)
    include_path: str | None = None
    limit: PositiveInt | None = None  # lm-eval documents per task (null: all)
    num_fewshot: NonNegativeInt | None = None  # null: each task's own default


@dataclass
class ValidationConfig:
    """Validation loss every ``every_n_steps`` optimizer steps (and after the last one), without gradients.

    ``dataset`` is built like the training one (the recipe passes ``tokenizer`` and ``max_seq_len``);
    rows are read in order (no shuffle), packed as the training rows are. The loss is the sum of the
    cross-entropy over every trained token of the first ``max_batches`` batches (null: the whole split)
    divided by their count, the training loss's token normalisation. Every count is >= 1 (null where
    allowed means all batches / the training batch size).
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


@dataclass
class TrainingConfig:
    """The keys every training recipe's schema shares (each recipe's ``Config`` adds its own).

    Every number carries its bound (``tune validate`` refuses the rest): counts are >= 1 (``num_workers``
    and ``lr_schedule.warmup_steps`` >= 0: zero means none), ``seed`` is an unsigned 64-bit value, and
    ``clip_grad_norm`` is > 0 or null (a zero norm would zero every update and a negative one would
    reverse it while the run looked healthy).
    """

    model: Component
    tokenizer: Component
    dataset: Component
    output_dir: str
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None  # null | auto | a checkpoint directory
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16-pure", "fp16"] = "auto"
    # fp32 matmuls on TF32 tensor cores where the GPU has them (Ampere+); no effect elsewhere.
    tf32: bool = True
    batch_size: PositiveInt = 4
    max_seq_len: PositiveInt = 1024
    shuffle: bool = True
    num_workers: NonNegativeInt = 0
    gradient_accumulation_steps: PositiveInt = 1
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    seed: Seed = 0
    clip_grad_norm: PositiveFloat | None = 1.0  # null: measure the norm only
    activation_checkpointing: bool = False
    compile: bool = False
    attention: AttentionName = "auto"  # see ft_recipes.training.apply_attention
    validation: ValidationConfig | None = None
    loggers: list[LoggerName] = field(default_factory=lambda: ["jsonl"])
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Several ranks (torchrun): the data-parallel mesh, null = from the launch (shard within a node,
    # replicate across nodes); host-memory shards (CUDA only); how long a collective waits for a peer.
    dp_shard: PositiveInt | None = None
    dp_replicate: PositiveInt | None = None
    fsdp_offload: bool = False
    dist_timeout_s: PositiveFloat = 600.0
