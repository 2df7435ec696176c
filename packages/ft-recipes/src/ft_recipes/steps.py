"""The steps every recipe shares, as public API: what a copied recipe (``tune cp``), a test or a benchmark
calls instead of reaching into ft-recipes' private modules.

Setup (``setup_training``, the one setup of every training recipe, returning a ``TrainingState``;
``pick_device``, ``load_model_and_tokenizer``, ``stop_token_ids``: EOS plus ft-data's end-of-turn
markers) and the training steps in their loop order (``load_tokenizer``, ``load_model``,
``build_loader``, ``micro_batches``, ``forward_backward``, ``optimizer_step``, ``end_step``,
``save_checkpoint`` / ``resume_checkpoint`` (``CheckpointSaver``: blocking or background saves, one in flight), ``run_eval`` / ``report_eval``, then the outputs: ``release_optimizer``,
``save_hf_dir``, ``save_merged_hf_dir``, ``save_base_hf_dir``; ``train`` is the whole loop, the same at
every world size, around a window step: ``sft_window`` or ``preference_window``, a ``WindowStep``;
``global_sum`` adds a step's figures over the ranks).
The preference (DPO) steps: ``preference_forward_backward``, the reference log-prob sources
(``adapters_off_reference``, ``frozen_reference``, ``policy_reference``, ``precompute_reference``,
``table_reference``),
``preference_train``, ``preference_validation`` and ``validate_preference_run`` (a run's printed
validation).
They are implemented once, in ``ft_recipes._setup``, ``ft_recipes._training_setup``,
``ft_recipes._train`` and ``ft_recipes._preference_steps``, and every shipped recipe
calls them, so a feature cannot differ between recipes; this module only names them publicly.
"""

from __future__ import annotations

from ft_recipes._preference_steps import (
    Reference,
    adapters_off_reference,
    frozen_reference,
    policy_reference,
    precompute_reference,
    preference_forward_backward,
    preference_train,
    preference_validation,
    preference_window,
    table_reference,
    training_kernel_everywhere,
    validate_preference_run,
)
from ft_recipes._setup import load_model_and_tokenizer, pick_device, stop_token_ids
from ft_recipes._train import (
    METRICS,
    CheckpointSaver,
    MetricsLog,
    WindowStep,
    build_loader,
    build_validation_loader,
    check_eval_data,
    check_output_dir,
    end_step,
    forward_backward,
    global_sum,
    load_model,
    load_tokenizer,
    micro_batches,
    optimizer_step,
    peak_memory_mib,
    release_optimizer,
    report_eval,
    resume_checkpoint,
    run_eval,
    save_base_hf_dir,
    save_checkpoint,
    save_hf_dir,
    save_merged_hf_dir,
    seed_everything,
    sft_window,
    train,
    validation_due,
    validation_loss,
)
from ft_recipes._training_setup import TrainingState, setup_training

__all__ = [
    "METRICS",
    "CheckpointSaver",
    "MetricsLog",
    "Reference",
    "TrainingState",
    "WindowStep",
    "adapters_off_reference",
    "build_loader",
    "build_validation_loader",
    "check_eval_data",
    "check_output_dir",
    "end_step",
    "forward_backward",
    "frozen_reference",
    "global_sum",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "micro_batches",
    "optimizer_step",
    "peak_memory_mib",
    "pick_device",
    "policy_reference",
    "precompute_reference",
    "preference_forward_backward",
    "preference_train",
    "preference_validation",
    "preference_window",
    "release_optimizer",
    "report_eval",
    "resume_checkpoint",
    "run_eval",
    "save_base_hf_dir",
    "save_checkpoint",
    "save_hf_dir",
    "save_merged_hf_dir",
    "seed_everything",
    "setup_training",
    "sft_window",
    "stop_token_ids",
    "table_reference",
    "train",
    "training_kernel_everywhere",
    "validate_preference_run",
    "validation_due",
    "validation_loss",
]
