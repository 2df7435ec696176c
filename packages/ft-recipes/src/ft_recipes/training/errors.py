"""Typed exceptions of ``ft_recipes.training``.

They subclass ft-recipes' two families (:class:`~ft_recipes.errors.UserError`: bad input, exit 2;
:class:`~ft_recipes.errors.ExpectedFailure`: exit 1) so the command line maps them like any other
ft-recipes error. Messages are one line naming the option and the value.
"""

from __future__ import annotations

from ft_recipes.errors import ExpectedFailure, UserError

__all__ = [
    "LossError",
    "MissingOptimizerError",
    "OptimizerError",
    "PrecisionError",
    "ScheduleError",
    "TrainingDivergedError",
    "TrainingError",
]


class TrainingError(UserError):
    """Base class of the training utilities' input errors."""


class PrecisionError(TrainingError):
    """An unknown precision name, or one the device cannot run (bf16 on a GPU without bf16)."""


class OptimizerError(TrainingError):
    """An unknown optimizer name, or options it does not take."""


class ScheduleError(TrainingError):
    """An unknown LR schedule, or inconsistent warmup / total steps."""


class LossError(TrainingError):
    """Inputs to the loss that cannot be right (shape mismatch, non-positive normaliser)."""


class MissingOptimizerError(ExpectedFailure):
    """An optimizer from an optional package (bitsandbytes) that is not installed or not usable here."""


class TrainingDivergedError(ExpectedFailure):
    """A non-finite loss or gradient norm: the run stops and keeps its last good checkpoint."""
