"""Recipes ``lora_finetune_single_device`` and ``lora_finetune_distributed``: LoRA (Hu et al., 2021), DoRA
(Liu et al., 2024) and QLoRA (Dettmers et al., 2023) fine-tuning on one device or sharded over several
(FSDP2 / HSDP under torchrun), chosen by config (``lora.use_dora``, ``lora.quantize``).

``tune run lora_finetune_single_device --config smollm2/135M_lora``;
``tune run --nproc-per-node 8 lora_finetune_distributed --config llama3_1/70B_lora``. Both names run
this file: the setup and the loop serve every world size (``ft_recipes._distributed``). Flow: setup (device, precision,
data, the model streamed into its final form with adapters, optimizer, resume) -> train (accumulation windows with the token-normalised
loss, clipping, LR schedule, validation and checkpoints every N steps) -> save (PEFT adapter; for a
GGUF base the dequantised base as an HF directory beside it; the merged model when ``merge: true``)
-> cleanup.

Copy it with ``tune cp lora_finetune_single_device ./my_lora.py`` and change what you need.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ft_recipes._train_config import (
    AttentionName,
    CheckpointConfig,
    EvalConfig,
    LoggerName,
    OptimizerConfig,
    ScheduleConfig,
    ValidationConfig,
    WandbConfig,
)
from ft_recipes.config import Component, Interval, NonNegativeInt, PositiveFloat, PositiveInt, Seed
from ft_recipes.runner import write_resolved_config

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "LoraConfig", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as lora_finetune_distributed too
# The recipe passes these keywords itself.
PROVIDED = {
    "model": {"dtype", "device", "prepare", "placement"},
    "dataset": {"tokenizer", "max_seq_len"},
    "validation.dataset": {"tokenizer", "max_seq_len"},
}
FILE_KEYS = ("model.path", "tokenizer.path", "dataset.source", "validation.dataset.source")


@dataclass
class LoraConfig:
    """Which layers get adapters and how (``ft_peft.apply_lora``); ``quantize`` makes it QLoRA.

    Attributes:
        rank: >= 1.
        alpha: > 0: the adapter's output is scaled by ``alpha / rank``, so zero makes an adapter that
            never learns (its gradients are zero too) and a negative one only flips its sign.
        dropout: In [0, 1): the probability of dropping an adapter input; 1 would drop them all.
    """

    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    rank: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: Annotated[float, Interval(0, 1, high_open=True)] = 0.0
    use_dora: bool = False
    use_rslora: bool = False
    quantize: Literal["nf4", "fp4", "int8"] | None = None


@dataclass
class Config:
    """Schema of a ``lora_finetune_single_device`` config (every key is checked).

    Every number carries its bound (``tune validate`` refuses the rest): counts are >= 1 (``num_workers``
    and ``lr_schedule.warmup_steps`` >= 0: zero means none), ``seed`` is an unsigned 64-bit value, and
    ``clip_grad_norm`` is > 0 or null (a zero norm would zero every update and a negative one would
    reverse it while the run looked healthy).
    """

    model: Component
    tokenizer: Component
    dataset: Component
    output_dir: str
    lora: LoraConfig = field(default_factory=LoraConfig)
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
    merge: bool = False
    eval: EvalConfig | None = None  # one process only
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
    base_path: str


def setup(cfg: Config) -> Run:
    """Device and world, precision, data, the model in its final form (built on meta -> adapters -> the
    precision policy's storage dtypes -> the checkpoint streamed in), then attention -> activation
    checkpointing -> compile -> sharding -> optimizer -> schedule -> resume."""
    import ft_dist
    import ft_models
    import ft_peft
    from ft_recipes import _distributed, _train
    from ft_recipes._assets import resolve_path
    from ft_recipes._setup import pick_device
    from ft_recipes.errors import UserError
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
    if world.sharded and cfg.eval is not None:
        raise UserError(
            "eval: greedy evaluation runs in one process; remove eval or run it with `tune run eval`"
        )
    policy = resolve_precision(cfg.precision, device)
    _distributed.check_precision(world, policy.name)
    tf32 = apply_tf32(cfg.tf32, device)
    print(f"[lora] device={device} precision={policy.name} ({policy.reason}); {tf32}", file=sys.stderr)
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
    # After the data (a dataset component may write the eval file, as the demo's does), before the model:
    # a missing or malformed eval.data stops the run here, not once training is over.
    _train.check_eval_data(cfg.eval)
    lc = cfg.lora
    # QLoRA dequantises to the run's compute dtype: fp32 runs stay fp32, bf16-mixed computes in bf16.
    quantize = None
    if lc.quantize is not None:
        quantize = ft_peft.QuantConfig(lc.quantize, compute_dtype=policy.compute_dtype)

    def final_form(model: Any) -> None:
        # On the meta device, before any weight is read: the checkpoint then streams straight into it.
        ft_peft.apply_lora(
            model,
            lc.target_modules,
            rank=lc.rank,
            alpha=lc.alpha,
            dropout=lc.dropout,
            use_rslora=lc.use_rslora,
            use_dora=lc.use_dora,
            quantize=quantize,
        )
        ft_peft.set_trainable(model)
        # storage dtypes: frozen base in the policy's, adapters fp32 (sharded: FSDP2 makes the casts)
        apply_precision(model, policy, sharded=world.sharded)

    _train.seed_everything(cfg.seed)  # the adapter's initialisation, drawn as the adapters are created
    # Several ranks: each keeps only its shards of every tensor as it streams in.
    model = _train.load_model(
        cfg.model, tokenizer, device, prepare=final_form, shard=_distributed.placement(world)
    )

    written = None  # removed again if setup fails, so a refused run leaves nothing behind
    base_path = str(resolve_path(cfg.model["path"]).resolve())
    if ft_models.checkpoint_format(base_path) != "hf":  # PEFT needs an HF base: write it beside the adapter
        base_dir = Path(cfg.output_dir) / "base"
        if not (base_dir / "config.json").is_file() and world.is_main:
            _train.save_base_hf_dir(base_path, tokenizer, base_dir)
            written = base_dir
        _distributed.barrier(world)  # the other ranks read it after rank 0 wrote it
        base_path = str(base_dir.resolve())

    try:
        attention = apply_attention(
            model,
            cfg.attention,
            device=device,
            dtype=policy.compute_dtype,
            training=True,
            max_seq_len=cfg.max_seq_len,
        )
        print(f"[lora] attention={attention}", file=sys.stderr)
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
        state = _train.app_state(model, optimizer, scheduler, loader, counters, lora=True, scaler=scaler)
        resumed = _train.resume_checkpoint(
            cfg.output_dir, cfg.resume, state, keep_last=cfg.checkpoint.keep_last
        )
        if resumed is not None:
            print(f"[lora] resumed from {resumed} at step {counters['step']}", file=sys.stderr)
    except BaseException:
        if written is not None:
            shutil.rmtree(written, ignore_errors=True)
        raise
    write_resolved_config(cfg.output_dir)  # only now: a run refused above leaves the old one
    return Run(
        cfg, device, world, model, tokenizer, loader, optimizer, scheduler,
        scaler, state, counters, total, val_loader, base_path,
    )  # fmt: skip


def train(run: Run) -> None:
    """The loop, one optimizer step per accumulation window until ``total_steps`` (``_train.train``,
    the same for every training recipe: copy it here to change it for this recipe only)."""
    from ft_recipes import _train

    _train.train(run)


def save(run: Run) -> None:
    """The PEFT adapter (``adapter/``) and, with ``merge: true``, the merged HF model (``merged/``).

    The optimizer is released first; the merged model is streamed (one merged layer at a time, fp32
    a slice at a time), never held whole. Sharded: every rank gathers, rank 0 writes.
    """
    from ft_recipes import _export, _train

    _train.release_optimizer(run)
    out = Path(run.cfg.output_dir)
    if _export.save_adapter(run.model, out / "adapter", run.base_path) is not None:
        print(f"[lora] adapter: {out / 'adapter'} (base {run.base_path})", file=sys.stderr)
    if run.cfg.merge and _train.save_merged_hf_dir(run.model, run.tokenizer, out / "merged") is not None:
        print(f"[lora] merged model: {out / 'merged'}", file=sys.stderr)


def main(cfg: Config) -> None:
    """setup -> (evaluate the base) -> train -> (evaluate the result) -> save -> cleanup."""
    from ft_recipes import _distributed, _train

    run = setup(cfg)
    if cfg.eval is not None and cfg.eval.before:
        base = _train.run_eval(run.model, run.tokenizer, cfg.eval, cfg.output_dir, "base")
    with _distributed.together():  # one rank's failure ends every rank, naming it
        train(run)
    if cfg.eval is not None:
        tuned = _train.run_eval(run.model, run.tokenizer, cfg.eval, cfg.output_dir, "tuned")
        if cfg.eval.before:
            print(f"[eval] {cfg.eval.metric}: base {base:.1f} -> tuned {tuned:.1f}", flush=True)
    with _distributed.together():
        save(run)
    del run  # cleanup: the model and loader worker processes go with it
    _distributed.finish()
