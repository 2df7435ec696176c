"""Learning-rate schedules with linear warmup: cosine (Loshchilov & Hutter 2017, SGDR, one half cycle),
linear decay, constant.

Each schedule is a ``torch.optim.lr_scheduler.LambdaLR`` whose multiplier is a :class:`WarmupSchedule`
object rather than a closure: ``LambdaLR.state_dict`` stores a callable object's attributes (plain
numbers and a string), so the schedule round-trips through a checkpoint loaded with
``weights_only=True`` and a resumed run continues the same curve. The curves are transformers'
(``get_cosine_schedule_with_warmup`` and friends): the multiplier is ``step / warmup`` during warmup (0
at step 0), then decays over ``total_steps - warmup_steps`` steps, never below ``min_lr_ratio``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from ft_recipes.training.errors import ScheduleError

__all__ = ["SCHEDULES", "WarmupSchedule", "build_lr_scheduler"]

SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


@dataclasses.dataclass
class WarmupSchedule:
    """The LR multiplier at an optimizer step (callable by ``LambdaLR``)."""

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.kind == "cosine":
            decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        else:
            decay = max(0.0, 1.0 - progress)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay if progress <= 1.0 else self.min_lr_ratio


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *,
    warmup_steps: int = 0,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A warmup + decay schedule over ``total_steps`` optimizer steps.

    Args:
        optimizer: its groups' current ``lr`` is the peak learning rate.
        kind: ``cosine``, ``linear`` or ``constant``.
        warmup_steps: linear warmup from 0 over this many steps.
        total_steps: the run's optimizer steps (after it the multiplier stays at ``min_lr_ratio``).
        min_lr_ratio: floor of the decay as a fraction of the peak (ignored by ``constant``).

    Raises:
        ScheduleError: unknown kind, negative warmup, warmup longer than the run, ratio outside [0, 1].
    """
    if kind not in SCHEDULES:
        raise ScheduleError(
            f"lr_scheduler: unknown schedule {kind!r} (expected one of {', '.join(SCHEDULES)})"
        )
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ScheduleError(
            f"lr_scheduler: need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ScheduleError(f"lr_scheduler: min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return LambdaLR(optimizer, WarmupSchedule(kind, warmup_steps, total_steps, float(min_lr_ratio)))
