"""What the preference (DPO) recipes share before torch is imported: the ``dpo`` schema and the loss it
builds, so ``tune validate`` reads either recipe's schema cheaply and both recipes refuse the same bad
settings with the same message.

``lora_dpo_single_device`` (the reference is the model with its adapters disabled) and
``full_dpo_distributed`` (a frozen copy, or the policy's own log-probs computed once) differ only in
where the reference comes from; the schema, the loss and its checks are here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from ft_recipes.config import Interval, NonNegativeFloat, PositiveFloat, PositiveInt

__all__ = ["PreferenceConfig", "build_loss"]


@dataclass
class PreferenceConfig:
    """The preference loss (TRL's names) and where the reference log-probs come from.

    Attributes:
        loss_type: One or several of ``sigmoid`` (DPO), ``hinge``, ``ipo``, ``robust``, ``simpo``
            (reference-free, alone only), summed with ``loss_weights`` (default 1 each).
        beta: > 0, the strength of the pull towards the reference (IPO's tau, SimPO's beta).
        loss_weights: Each >= 0 (a negative weight would train that loss backwards; 0 turns it off).
        label_smoothing: In [0, 0.5): the assumed probability of a flipped label (``robust``, ``simpo``).
        simpo_gamma: SimPO's target reward margin, >= 0.
        reference: ``live`` (computed every step: the LoRA model with its adapters disabled, or a frozen
            copy of the full model) or ``precomputed`` (every pair's reference log-probs once before
            training; identical numbers, one forward per micro-batch instead of two, and for full
            fine-tuning no second model in memory).
        precompute_batch_size: Pairs per forward when precomputing (null: ``batch_size``).
    """

    loss_type: list[Literal["sigmoid", "hinge", "ipo", "robust", "simpo"]] = field(
        default_factory=lambda: ["sigmoid"]
    )
    loss_weights: list[NonNegativeFloat] | None = None
    beta: PositiveFloat = 0.1
    label_smoothing: Annotated[float, Interval(0, 0.5, high_open=True)] = 0.0
    simpo_gamma: NonNegativeFloat = 0.5
    reference: Literal["live", "precomputed"] = "live"
    precompute_batch_size: PositiveInt | None = None


def build_loss(d: PreferenceConfig) -> Any:
    """The :class:`ft_recipes.training.PreferenceLoss` of ``d`` (imports torch).

    Raises:
        UserError: A combination the loss refuses (SimPO mixed with others, weights that do not fit),
            naming the ``dpo.`` key.
    """
    from ft_recipes.errors import UserError
    from ft_recipes.training import LossError, PreferenceLoss

    try:
        return PreferenceLoss(
            loss_type=tuple(d.loss_type),
            loss_weights=None if d.loss_weights is None else tuple(d.loss_weights),
            beta=d.beta,
            label_smoothing=d.label_smoothing,
            simpo_gamma=d.simpo_gamma,
        )
    except LossError as e:
        raise UserError(f"dpo.{e}") from e
