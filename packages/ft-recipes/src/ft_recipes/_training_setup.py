"""The one setup of every training recipe (full, LoRA / DoRA / QLoRA, DPO) at every world size.

:func:`setup_training` applies, in this order (ARCHITECTURE.md states the same order): device and
world (``ft_recipes._distributed``) -> precision -> tokenizer and data -> the model streamed into its
final form (the recipe's ``final_form`` on the meta device: adapters, storage dtypes; sharded: each
rank keeps only its shards) -> attention -> activation checkpointing -> compile -> sharding ->
optimizer -> schedule -> resume, then writes the resolved config. A recipe passes only what is its
own: the transform of its model, whether only the trainable tensors are checkpointed, and hooks for
what it adds between the steps (the LoRA recipe's eval-file check and GGUF base directory).

Importing this module does not import torch (a recipe's schema module imports it: ``tune validate``
stays cheap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_recipes._progress import progress

__all__ = ["TrainingState", "setup_training"]


@dataclass
class TrainingState:
    """What the one loop (``_train.train``) and the savers need, built by :func:`setup_training`.

    Attributes:
        cfg: The recipe's config.
        device: Where this rank computes.
        world: This rank's place in the run (``ft_recipes._distributed.World``).
        model: The model in its final form (sharded on several ranks).
        tokenizer: The tokenizer.
        loader: This rank's training loader (``ft_data.Loader``).
        optimizer: The optimizer over the trainable (sharded) parameters.
        scheduler: The LR schedule.
        scaler: fp16's gradient scaler, else None.
        state: What a checkpoint holds (``_train.app_state``).
        counters: ``step`` and ``tokens``, updated by the loop.
        total_steps: Optimizer steps of the run.
        val_loader: The validation loader, or None.
        policy: The precision policy.
    """

    cfg: Any
    device: Any  # torch.device (torch is imported only when a run starts)
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
    policy: Any


def setup_training(
    cfg: Any,
    tag: str,
    *,
    final_form: Callable[[Any, Any], Callable[[Any], None]],
    trainable_only: bool,
    after_data: Callable[[Any], None] | None = None,
    after_load: Callable[[Any, Any], Callable[[], None] | None] | None = None,
) -> TrainingState:
    """Build a training run in the one order (module docstring).

    Args:
        cfg: A training config (the keys every training recipe has).
        tag: The recipe's log tag (``full``, ``lora``).
        final_form: ``(policy, world) -> prepare``: what turns the meta model into its final form
            before any weight is read (adapters, then ``apply_precision``).
        trainable_only: Checkpoint only the trainable tensors (the adapters) and their optimizer state.
        after_data: Called with the world once the data is built (a recipe's own checks).
        after_load: Called with (model, tokenizer) once the model is loaded; may return what undoes it
            (files it wrote), called if the rest of the setup fails.

    Raises:
        UserError: Any refused setting (mesh, precision, data), before anything is written.
    """
    import ft_dist
    from ft_recipes import _distributed, _train
    from ft_recipes._setup import pick_device
    from ft_recipes.runner import write_resolved_config
    from ft_recipes.training import (
        apply_attention,
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
    progress(f"[{tag}] device={device} precision={policy.name} ({policy.reason}); {tf32}")
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
    if after_data is not None:
        after_data(world)
    _train.seed_everything(cfg.seed)  # adapter init and dropout; the checkpoints' RNG sidecar repeats
    # Built on meta, given its final form there, then streamed in: one copy of the master weights.
    model = _train.load_model(
        cfg.model, tokenizer, device, prepare=final_form(policy, world), shard=_distributed.placement(world)
    )
    undo = after_load(model, tokenizer) if after_load is not None else None
    try:
        attention = apply_attention(
            model,
            cfg.attention,
            device=device,
            dtype=policy.compute_dtype,
            training=True,
            max_seq_len=cfg.max_seq_len,
        )
        progress(f"[{tag}] attention={attention}")
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
        rows = cfg.batch_size * world.launch.world_size * cfg.gradient_accumulation_steps
        counters = {"step": 0, "tokens": 0, _train.GLOBAL_BATCH: rows}  # the global batch: checked on resume
        state = _train.app_state(
            model, optimizer, scheduler, loader, counters, lora=trainable_only, scaler=scaler
        )
        resumed = _train.resume_checkpoint(
            cfg.output_dir, cfg.resume, state, keep_last=cfg.checkpoint.keep_last
        )
        if resumed is not None:
            progress(_train.resumed_line(tag, resumed, counters["step"], world.launch.world_size))
    except BaseException:
        if undo is not None:
            undo()
        raise
    write_resolved_config(cfg.output_dir)  # only now: a run refused above leaves the old one
    return TrainingState(
        cfg, device, world, model, tokenizer, loader, optimizer, scheduler, scaler, state, counters,
        total, val_loader, policy,
    )  # fmt: skip
