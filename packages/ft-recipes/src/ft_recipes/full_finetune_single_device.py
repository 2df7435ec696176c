"""Recipes ``full_finetune_single_device`` and ``full_finetune_distributed``: every parameter trained, on
one device or sharded over several (FSDP2 / HSDP under torchrun).

``tune run full_finetune_single_device --config smollm2/135M_full``;
``tune run --nproc-per-node 8 full_finetune_distributed --config llama3_1/8B_full``. Both names run this
file: the setup and the loop serve every world size (``ft_recipes._distributed``). Flow: setup (device, precision,
model, data, optimizer, resume) -> train (accumulation windows with the token-normalised loss, clipping,
LR schedule, validation and checkpoints every N steps) -> save (an HF directory ``model/`` with the
tokenizer files and chat template, which transformers loads as is) -> cleanup.

Copy it with ``tune cp full_finetune_single_device ./my_full.py`` and change what you need.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ft_recipes._train_config import (
    AttentionName,
    CheckpointConfig,
    LoggerName,
    OptimizerConfig,
    ScheduleConfig,
    ValidationConfig,
    WandbConfig,
)
from ft_recipes.config import Component, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from ft_recipes.runner import write_resolved_config

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as full_finetune_distributed too
# The recipe passes these keywords itself.
PROVIDED = {
    "model": {"dtype", "device", "prepare", "placement"},
    "dataset": {"tokenizer", "max_seq_len"},
    "validation.dataset": {"tokenizer", "max_seq_len"},
}
FILE_KEYS = ("model.path", "tokenizer.path", "dataset.source", "validation.dataset.source")


@dataclass
class Config:
    """Schema of a ``full_finetune_single_device`` config (every key is checked).

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
    packed: bool = True
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


def before_run(cfg: Config) -> None:
    """Called by ``tune run`` before it writes anything: refuse a non-empty output dir without resume
    and a logger whose optional library is missing."""
    from ft_recipes._metrics import check_loggers
    from ft_recipes._train import check_output_dir

    check_output_dir(cfg.output_dir, cfg.resume)
    check_loggers(cfg.loggers)


@dataclass
class Run:
    """Everything the loop needs, built by :func:`setup`."""

    cfg: Config
    device: Any
    world: Any
    model: Any
    tokenizer: Any
    loader: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    state: dict[str, Any]
    counters: dict[str, int]
    total_steps: int
    val_loader: Any


def setup(cfg: Config) -> Run:
    """Device and world, precision, data, the model (built on meta, storage dtypes set there, the
    checkpoint streamed in), then attention -> activation checkpointing -> compile -> sharding ->
    optimizer -> schedule -> resume."""
    import ft_dist
    from ft_recipes import _distributed, _train
    from ft_recipes._setup import pick_device
    from ft_recipes.training import (
        apply_attention,
        apply_precision,
        apply_tf32,
        build_lr_scheduler,
        build_optimizer,
        compile_blocks,
        resolve_precision,
    )

    world = _distributed.start(cfg, pick_device(cfg.device))
    device = world.launch.device
    policy = resolve_precision(cfg.precision, device)
    _distributed.check_precision(world, policy.name)
    tf32 = apply_tf32(cfg.tf32, device)
    print(f"[full] device={device} precision={policy.name} ({policy.reason}); {tf32}", file=sys.stderr)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = _train.load_tokenizer(cfg.tokenizer)
    loader, total = _train.build_loader(
        cfg.dataset,
        tokenizer,
        batch_size=cfg.batch_size,
        max_seq_len=cfg.max_seq_len,
        seed=cfg.seed,
        packed=cfg.packed,
        shuffle=cfg.shuffle,
        accumulation=cfg.gradient_accumulation_steps,
        epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        rank=world.launch.rank,
        world_size=world.launch.world_size,
    )
    val_loader = None
    if cfg.validation is not None:
        val_loader = _train.build_validation_loader(
            cfg.validation,
            tokenizer,
            batch_size=cfg.batch_size,
            max_seq_len=cfg.max_seq_len,
            packed=cfg.packed,
        )
    _train.seed_everything(cfg.seed)  # dropout; and the checkpoints' RNG sidecar is the same run to run
    # Built on meta, given the policy's storage dtypes there, then streamed in: one copy of the master
    # weights (fp32 under bf16-mixed), never a second one.
    model = _train.load_model(
        cfg.model,
        tokenizer,
        device,
        prepare=lambda m: apply_precision(m, policy, sharded=world.sharded),
        shard=_distributed.placement(world),  # several ranks: each keeps only its shards
    )
    attention = apply_attention(
        model,
        cfg.attention,
        device=device,
        dtype=policy.compute_dtype,
        training=True,
        max_seq_len=cfg.max_seq_len,
    )
    print(f"[full] attention={attention}", file=sys.stderr)
    if cfg.activation_checkpointing:
        ft_dist.apply_activation_checkpointing(model)
    if cfg.compile:
        compile_blocks(model)  # per block: state-dict keys keep their names
    _distributed.shard(model, world, policy.fsdp_param_dtype, cfg.fsdp_offload)

    o = cfg.optimizer
    optimizer = build_optimizer(
        model, o.name, lr=o.lr, weight_decay=o.weight_decay, betas=(o.betas[0], o.betas[1]), eps=o.eps
    )
    s = cfg.lr_schedule
    scheduler = build_lr_scheduler(
        optimizer,
        s.kind,
        warmup_steps=min(s.warmup_steps, total),
        total_steps=total,
        min_lr_ratio=s.min_lr_ratio,
    )
    scaler = policy.make_grad_scaler(device)  # fp16 only; checkpointed with the rest
    counters = {"step": 0, "tokens": 0}
    state = _train.app_state(model, optimizer, scheduler, loader, counters, lora=False, scaler=scaler)
    resumed = _train.resume_checkpoint(cfg.output_dir, cfg.resume, state, keep_last=cfg.checkpoint.keep_last)
    if resumed is not None:
        print(f"[full] resumed from {resumed} at step {counters['step']}", file=sys.stderr)
    write_resolved_config(cfg.output_dir)  # only now: a run refused above leaves the old one
    return Run(
        cfg,
        device,
        world,
        model,
        tokenizer,
        loader,
        optimizer,
        scheduler,
        scaler,
        state,
        counters,
        total,
        val_loader,
    )


def train(run: Run) -> None:
    """The loop, one optimizer step per accumulation window until ``total_steps`` (``_train.train``,
    the same for every training recipe: copy it here to change it for this recipe only)."""
    from ft_recipes import _train

    _train.train(run)


def save(run: Run) -> None:
    """The trained model as an HF directory (``model/``) with its tokenizer files and chat template,
    written after the optimizer is released, one tensor at a time (sharded: gathered one parameter at
    a time, rank 0 writes)."""
    from ft_recipes import _train

    _train.release_optimizer(run)
    path = _train.save_hf_dir(run.model, run.tokenizer, Path(run.cfg.output_dir) / "model")
    if path is not None:
        print(f"[full] model: {path}", file=sys.stderr)


def main(cfg: Config) -> None:
    """setup -> train -> save -> cleanup (one rank's failure ends every rank, naming it)."""
    from ft_recipes import _distributed

    run = setup(cfg)
    with _distributed.together():
        train(run)
        save(run)
    del run  # cleanup: the model and loader worker processes go with it
    _distributed.finish()
