"""Recipes ``lora_dpo_single_device`` and ``lora_dpo_distributed``: preference optimisation (DPO, Rafailov
et al. 2023, and the variants of ``ft_recipes.training``: hinge, IPO, robust, SimPO) of a LoRA or QLoRA
adapter on one device or sharded over several (FSDP2 under torchrun; the loss is normalised by the
window's pairs over every rank).

``tune run lora_dpo_single_device --config smollm2/135M_dpo``;
``tune run --nproc-per-node 2 lora_dpo_distributed --config smollm2/135M_dpo``. The reference model is the same model with
its adapters disabled (no second copy): ``dpo.reference: live`` computes it every step,
``precomputed`` once for every pair before training (then each step runs the policy only). Flow: setup
(the LoRA recipe's own: device, precision, model, adapters, data, optimizer, resume; plus the reference)
-> train (accumulation windows with the pair-normalised loss; TRL's metrics ``rewards/*``, ``logps/*``,
``logits/*`` logged each step and on the validation pairs; checkpoints) -> save (PEFT adapter; merged
model with ``merge: true``) -> cleanup. Checkpoints and ``resume`` work exactly as in SFT.

Copy it with ``tune cp lora_dpo_single_device ./my_dpo.py`` and change what you need.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from ft_recipes import lora_finetune_single_device
from ft_recipes._progress import progress
from ft_recipes._train_config import (
    TRAINING_FILE_KEYS,
    TRAINING_PROVIDED,
    EvalConfig,
    TrainingConfig,
)
from ft_recipes.config import (
    Interval,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from ft_recipes.lora_finetune_single_device import LoraConfig

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "PreferenceConfig", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as lora_dpo_distributed too
PROVIDED = TRAINING_PROVIDED  # the keywords the shared setup passes itself
FILE_KEYS = TRAINING_FILE_KEYS


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
        reference: ``live`` (adapters disabled every step) or ``precomputed`` (once before training;
            identical numbers, one forward per micro-batch instead of two).
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


@dataclass
class Config(TrainingConfig):
    """Schema of a ``lora_dpo_single_device`` config: the LoRA recipe's keys (without ``packed``: pairs are
    never packed) plus ``dpo``. Every number carries its bound, as in the LoRA recipe."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    merge: bool = False
    eval: EvalConfig | None = None  # one process only

    @property
    def packed(self) -> bool:
        """Preference pairs are one pair per row (the shared setup reads this)."""
        return False


def _loss(cfg: Config) -> Any:
    from ft_recipes.errors import UserError
    from ft_recipes.training import LossError, PreferenceLoss

    d = cfg.dpo
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


def before_run(cfg: Config) -> None:
    """Called by ``tune run`` before it writes anything: the LoRA recipe's checks plus the loss settings."""
    from ft_recipes import lora_finetune_single_device

    _loss(cfg)
    lora_finetune_single_device.before_run(cfg)  # type: ignore[arg-type]


@dataclass
class Run(lora_finetune_single_device.Run):
    """The LoRA recipe's run plus the preference parts, built by :func:`setup`."""

    loss: Any = None
    reference: Any = None
    val_reference: Any = None

    def validate(self) -> dict[str, float]:
        """Loss and TRL's metrics on the validation pairs (``val_``-prefixed), printed on one line."""
        from ft_recipes._preference_steps import preference_validation

        v = self.cfg.validation
        assert v is not None
        result = preference_validation(
            self.model, self.val_loader, self.loss, self.val_reference, self.device, v.max_batches
        )
        progress(
            f"[val] loss {result['loss']:.4f}, reward accuracy {result['rewards/accuracies']:.3f}, "
            f"margin {result['rewards/margins']:.4f} over {int(result['pairs'])} pairs"
        )
        return {f"val_{k}": value for k, value in result.items()}


def setup(cfg: Config) -> Run:
    """The LoRA recipe's setup (one implementation of device, precision, adapters, data, optimizer and
    resume), then the reference: the adapters switched off, live or precomputed once."""
    from ft_recipes import _preference_steps as steps

    loss = _loss(cfg)
    base = lora_finetune_single_device.setup(cfg)  # type: ignore[arg-type]
    run = Run(**{f.name: getattr(base, f.name) for f in fields(base)}, loss=loss)  # type: ignore[arg-type]
    if loss.reference_free:
        return run
    live = steps.adapters_off_reference(run.model)
    run.reference = run.val_reference = live
    if cfg.dpo.reference == "precomputed":
        size = cfg.dpo.precompute_batch_size or cfg.batch_size
        run.reference = steps.table_reference(steps.precompute_reference(live, run.loader, run.device, size))
        if run.val_loader is not None:
            table = steps.precompute_reference(live, run.val_loader, run.device, size)
            run.val_reference = steps.table_reference(table)
        progress(f"[dpo] reference log-probs precomputed for {len(run.loader.dataset)} pairs")
    return run


def train(run: Run) -> None:
    """The preference loop (``_preference_steps.preference_train``: the SFT loop's steps around a
    pair-normalised window)."""
    from ft_recipes._preference_steps import preference_train

    preference_train(run)


def main(cfg: Config) -> None:
    """setup -> (evaluate the base) -> train -> (evaluate the result) -> save -> cleanup."""
    from ft_recipes import _distributed, _train, lora_finetune_single_device

    run = setup(cfg)
    base = None
    if cfg.eval is not None and cfg.eval.before:
        base = _train.run_eval(run.model, run.tokenizer, cfg.eval, cfg.output_dir, "base")
    with _distributed.together():  # one rank's failure ends every rank, naming it
        train(run)
    if cfg.eval is not None:
        tuned = _train.run_eval(run.model, run.tokenizer, cfg.eval, cfg.output_dir, "tuned")
        _train.report_eval(cfg.eval, base, tuned)
    with _distributed.together():
        lora_finetune_single_device.save(run)  # type: ignore[arg-type]
    del run
    _distributed.finish()
