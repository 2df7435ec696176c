"""Recipe ``full_dpo_distributed``: preference optimisation (DPO, Rafailov et al. 2023, and the variants of
``ft_recipes.training``: hinge, IPO, robust, SimPO) of every parameter, sharded over several processes
(FSDP2 / HSDP under torchrun) or in one process (the single-device result).

``tune run --nproc-per-node 8 full_dpo_distributed --config llama3_1/8B_full_dpo``;
``tune run full_dpo_distributed --config smollm2/135M_full_dpo``. Flow: setup (the full recipe's own:
device, precision, data, the model streamed into its final form, attention, activation checkpointing,
compile, sharding, optimizer, resume; plus the reference) -> train (accumulation windows with the loss
normalised by the window's pairs over every rank; TRL's metrics ``rewards/*``, ``logps/*``, ``logits/*``
each step and on the validation pairs; checkpoints) -> save (the HF directory ``model/``, as full SFT)
-> cleanup.

The reference (``dpo.reference``):

* ``live``: a frozen copy of the starting model, built through the same path as the policy (its
  storage dtypes, ``requires_grad`` off, sharded like the policy: each rank holds its shards of both);
  two forwards per micro-batch, twice the weight memory.
* ``precomputed``: the policy's own log-probs, every pair once before the first step (each rank
  computes its share; the tables are summed), then looked up; no second model in memory. The table
  (N x 2 fp32) is saved in every checkpoint, so a resumed run reads it back instead of recomputing it
  from weights that have trained since.

Copy it with ``tune cp full_dpo_distributed ./my_full_dpo.py`` and change what you need.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ft_recipes._preference_config import PreferenceConfig, build_loss
from ft_recipes._progress import progress
from ft_recipes._train_config import TRAINING_FILE_KEYS, TRAINING_PROVIDED, TrainingConfig
from ft_recipes._training_setup import TrainingState

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "PreferenceConfig", "before_run", "main", "setup"]

DISTRIBUTED = True  # one file at every world size
PROVIDED = TRAINING_PROVIDED  # the keywords the shared setup passes itself
FILE_KEYS = TRAINING_FILE_KEYS

TABLE_KEY = "reference"  # the checkpoint entry holding the precomputed reference log-probs


@dataclass
class Config(TrainingConfig):
    """Schema of a ``full_dpo_distributed`` config: the keys every training recipe shares
    (``TrainingConfig``, each number with its bound) plus ``dpo`` (shared with the LoRA DPO recipe).
    Pairs are never packed."""

    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)

    @property
    def packed(self) -> bool:
        """Preference pairs are one pair per row (the shared setup reads this)."""
        return False


def before_run(cfg: Config) -> None:
    """Called by ``tune run`` before it writes or loads anything: the loss settings, the reference
    settings (:func:`check_reference`), then the full recipe's checks (output dir, loggers)."""
    from ft_recipes import full_finetune_single_device

    loss = build_loss(cfg.dpo)
    if not loss.reference_free:
        check_reference(cfg)
    full_finetune_single_device.before_run(cfg)  # type: ignore[arg-type]


def check_reference(cfg: Config) -> None:
    """Refuse, before anything loads, what the reference mode cannot do: ``precompute_batch_size`` with
    ``live`` (nothing is precomputed), and a ``precomputed`` resume from a checkpoint without the table
    (a ``live`` run's, or another recipe's; or without the validation table when the resumed run
    validates): the table must come from the weights before the first step, which are gone by then.

    Raises:
        UserError: Naming the key or the checkpoint.
    """
    import ft_dist
    from ft_recipes.errors import CheckpointLoadError, UserError

    d = cfg.dpo
    if d.reference == "live":
        if d.precompute_batch_size is not None:
            raise UserError(
                "dpo.precompute_batch_size: only dpo.reference=precomputed precomputes; remove it or "
                "set dpo.reference=precomputed"
            )
        return
    path = _resumed_from(cfg)
    if path is None or not ft_dist.is_checkpoint(path):
        return  # a fresh start (or a resume path the setup refuses itself)
    try:
        keys = ft_dist.read_metadata(str(path / ".metadata")).state_dict_metadata
    except ft_dist.CheckpointError:
        return  # the setup's resume names the damaged checkpoint
    if f"{TABLE_KEY}.train" not in keys:
        raise CheckpointLoadError(
            f"resume: {path} holds no precomputed reference log-probs (saved by a dpo.reference=live "
            "run or another recipe); resume it with dpo.reference=live"
        )
    if cfg.validation is not None and f"{TABLE_KEY}.val" not in keys:
        raise CheckpointLoadError(
            f"resume: {path} holds no precomputed reference log-probs for validation pairs (saved by a "
            "run without validation); resume without validation or with dpo.reference=live"
        )


@dataclass
class Run(TrainingState):
    """The one training setup's state plus the preference parts, built by :func:`setup`."""

    loss: Any = None
    reference: Any = None
    val_reference: Any = None

    def validate(self) -> dict[str, float]:
        """Loss and TRL's metrics on the validation pairs (``val_``-prefixed), printed on one line."""
        from ft_recipes._preference_steps import validate_preference_run

        return validate_preference_run(self)


def frozen_copy(run: TrainingState) -> Any:
    """The reference model of ``dpo.reference: live``: the starting model again, through the policy's
    own path (streamed from ``model.path`` on the meta device into its final form, attention, compile,
    sharding) but frozen, so its storage dtypes are the policy's for frozen weights and a sharded run
    holds only this rank's shards of it. Activation checkpointing is left out: it never runs backward."""
    from ft_recipes import _distributed, _train
    from ft_recipes._preference_steps import training_kernel_everywhere
    from ft_recipes.training import apply_attention, apply_precision, compile_blocks

    cfg, world, policy = run.cfg, run.world, run.policy

    def prepare(model: Any) -> None:
        model.requires_grad_(False)
        apply_precision(model, policy, sharded=world.sharded)

    model = _train.load_model(
        cfg.model, run.tokenizer, run.device, prepare=prepare, shard=_distributed.placement(world)
    )
    model.requires_grad_(False)
    apply_attention(
        model,
        cfg.attention,
        device=run.device,
        dtype=policy.compute_dtype,
        training=True,  # the policy's kernels: the same numbers at step 0
        max_seq_len=cfg.max_seq_len,
    )
    training_kernel_everywhere(model)
    if cfg.compile:
        compile_blocks(model)
    _distributed.shard(model, world, policy.fsdp_param_dtype, cfg.fsdp_offload)
    return model.eval()


def _resumed_from(cfg: Config) -> Path | None:
    import ft_dist
    from ft_recipes._train import CHECKPOINTS

    if cfg.resume is None:
        return None
    if cfg.resume == "auto":  # the resume kept the checkpoint it loaded, the newest complete one
        return ft_dist.latest_checkpoint(Path(cfg.output_dir) / CHECKPOINTS)
    return Path(cfg.resume).expanduser()


def reference_tables(run: Run) -> dict[str, Any]:
    """The precomputed reference log-probs: ``train`` ``[N, 2]`` and ``val`` ``[M, 2]`` (with a
    validation split), computed from the policy before its first step, or read back from the checkpoint
    a resumed run started from.

    Raises:
        CheckpointLoadError: The run resumed from a checkpoint without the table (one written by a
            ``live`` run or another recipe): recomputing it from the trained weights would change the
            reference, so the run stops.
    """
    import torch

    import ft_dist
    from ft_recipes import _preference_steps as steps
    from ft_recipes.errors import CheckpointLoadError

    cfg = run.cfg
    loaders = {"train": run.loader, "val": run.val_loader}
    loaders = {k: v for k, v in loaders.items() if v is not None}
    if run.counters["step"] == 0:
        size = cfg.dpo.precompute_batch_size or cfg.batch_size
        own = steps.policy_reference(run.model)
        tables = {k: steps.precompute_reference(own, v, run.device, size) for k, v in loaders.items()}
        progress(f"[dpo] reference log-probs precomputed for {len(run.loader.dataset)} pairs")
        return tables
    tables = {k: torch.zeros(len(v.dataset), 2, dtype=torch.float32) for k, v in loaders.items()}
    path = _resumed_from(cfg)
    try:
        ft_dist.load_checkpoint(str(path), app_state={TABLE_KEY: tables})
    except ft_dist.CheckpointError as e:  # its pairs differ from this run's (check_reference saw the key)
        raise CheckpointLoadError(
            f"resume: {path}: no precomputed reference log-probs for these pairs ({e})"
        ) from e
    progress(f"[dpo] reference log-probs read from {path}")
    return tables


def setup(cfg: Config) -> Run:
    """The full recipe's setup (one implementation of device, precision, data, model, compile,
    sharding, optimizer and resume), then the reference: a frozen copy (``live``) or the precomputed
    table, which joins the checkpoint state (``reference``)."""
    from ft_recipes import _preference_steps as steps
    from ft_recipes import full_finetune_single_device

    loss = build_loss(cfg.dpo)
    base = full_finetune_single_device.setup(cfg)  # type: ignore[arg-type]
    run = Run(**{f.name: getattr(base, f.name) for f in fields(base)}, loss=loss)
    if loss.reference_free:
        return run
    steps.training_kernel_everywhere(run.model)
    if cfg.dpo.reference == "live":
        run.reference = run.val_reference = steps.frozen_reference(frozen_copy(run))
        return run
    tables = reference_tables(run)
    run.state[TABLE_KEY] = tables
    run.reference = steps.table_reference(tables["train"])
    if "val" in tables:
        run.val_reference = steps.table_reference(tables["val"])
    return run


def train(run: Run) -> None:
    """The preference loop (``_preference_steps.preference_train``: the one loop around the
    pair-normalised window)."""
    from ft_recipes._preference_steps import preference_train

    preference_train(run)


def main(cfg: Config) -> None:
    """setup -> train -> save (the full recipe's HF directory) -> cleanup (one rank's failure ends every
    rank, naming it)."""
    from ft_recipes import _distributed, full_finetune_single_device

    run = setup(cfg)
    with _distributed.together():
        train(run)
        run.reference = run.val_reference = None  # the frozen copy goes before the export gathers
        full_finetune_single_device.save(run)
    del run
    _distributed.finish()
