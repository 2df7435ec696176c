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
from typing import Any

from ft_recipes import lora_finetune_single_device
from ft_recipes._preference_config import PreferenceConfig, build_loss
from ft_recipes._progress import progress
from ft_recipes._train_config import (
    TRAINING_FILE_KEYS,
    TRAINING_PROVIDED,
    EvalConfig,
    TrainingConfig,
)
from ft_recipes.lora_finetune_single_device import LoraConfig

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "PreferenceConfig", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as lora_dpo_distributed too
PROVIDED = TRAINING_PROVIDED  # the keywords the shared setup passes itself
FILE_KEYS = TRAINING_FILE_KEYS


@dataclass
class Config(TrainingConfig):
    """Schema of a ``lora_dpo_single_device`` config: the LoRA recipe's keys (without ``packed``: pairs are
    never packed) plus ``dpo`` (``_preference_config.PreferenceConfig``, shared with
    ``full_dpo_distributed``). Every number carries its bound, as in the LoRA recipe."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    merge: bool = False
    eval: EvalConfig | None = None  # one process only

    @property
    def packed(self) -> bool:
        """Preference pairs are one pair per row (the shared setup reads this)."""
        return False


def _loss(cfg: Config) -> Any:
    return build_loss(cfg.dpo)


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
        from ft_recipes._preference_steps import validate_preference_run

        return validate_preference_run(self)


def setup(cfg: Config) -> Run:
    """The LoRA recipe's setup (one implementation of device, precision, adapters, data, optimizer and
    resume), then the reference: the adapters switched off, live or precomputed once."""
    from ft_recipes import _preference_steps as steps

    loss = _loss(cfg)
    base = lora_finetune_single_device.setup(cfg)  # type: ignore[arg-type]
    run = Run(**{f.name: getattr(base, f.name) for f in fields(base)}, loss=loss)  # type: ignore[arg-type]
    if loss.reference_free:
        return run
    steps.training_kernel_everywhere(run.model)
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
