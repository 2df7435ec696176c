"""Training utilities shared by every ft recipe: one implementation each.

The chunked loss, the preference losses and metrics (DPO and variants, TRL's definitions), the
precision policies (with the inference precision rule beside them: ``auto`` is decided in one
module), optimizers, LR schedules, gradient clipping, per-block compilation and the attention-kernel
setting. Activation checkpointing and checkpoints live in ``ft_dist``.
"""

from ft_recipes.training._attention import ATTENTION_CHOICES, apply_attention, describe_attention
from ft_recipes.training._clip import clip_grad_norm
from ft_recipes.training._compile import compile_blocks
from ft_recipes.training._loss import IGNORE_INDEX, batch_loss, linear_cross_entropy, prepare_batch
from ft_recipes.training._optim import OPTIMIZERS, build_optimizer
from ft_recipes.training._precision import (
    INFERENCE_PRECISIONS,
    PRECISIONS,
    DeviceFacts,
    InferencePrecision,
    PrecisionPolicy,
    apply_precision,
    apply_tf32,
    choose_inference_precision,
    choose_precision,
    choose_tf32,
    device_facts,
    resolve_inference_precision,
    resolve_precision,
)
from ft_recipes.training._preference import (
    LOSS_TYPES,
    METRIC_NAMES,
    PreferenceLoss,
    PreferenceStats,
    SequenceLogps,
    completion_logps,
    preference_loss,
    sequence_logps,
)
from ft_recipes.training._schedules import SCHEDULES, WarmupSchedule, build_lr_scheduler
from ft_recipes.training.errors import (
    LossError,
    MissingOptimizerError,
    OptimizerError,
    PrecisionError,
    ScheduleError,
    TrainingDivergedError,
    TrainingError,
)

__all__ = [
    "ATTENTION_CHOICES",
    "IGNORE_INDEX",
    "INFERENCE_PRECISIONS",
    "LOSS_TYPES",
    "METRIC_NAMES",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "DeviceFacts",
    "InferencePrecision",
    "LossError",
    "MissingOptimizerError",
    "OptimizerError",
    "PrecisionError",
    "PrecisionPolicy",
    "PreferenceLoss",
    "PreferenceStats",
    "ScheduleError",
    "SequenceLogps",
    "TrainingDivergedError",
    "TrainingError",
    "WarmupSchedule",
    "apply_attention",
    "apply_precision",
    "apply_tf32",
    "batch_loss",
    "build_lr_scheduler",
    "build_optimizer",
    "choose_inference_precision",
    "choose_precision",
    "choose_tf32",
    "clip_grad_norm",
    "compile_blocks",
    "completion_logps",
    "describe_attention",
    "device_facts",
    "linear_cross_entropy",
    "preference_loss",
    "prepare_batch",
    "resolve_inference_precision",
    "resolve_precision",
    "sequence_logps",
]
