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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ft_recipes._progress import is_main_process, progress
from ft_recipes._train_config import (
    TRAINING_FILE_KEYS,
    TRAINING_PROVIDED,
    EvalConfig,
    TrainingConfig,
)
from ft_recipes._training_setup import TrainingState
from ft_recipes.config import Interval, PositiveFloat, PositiveInt

# torch and the model code are imported inside the functions, so `tune validate` reads this schema cheaply.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "LoraConfig", "before_run", "main", "setup"]

DISTRIBUTED = True  # registered as lora_finetune_distributed too
PROVIDED = TRAINING_PROVIDED  # the keywords the shared setup passes itself
FILE_KEYS = TRAINING_FILE_KEYS


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
class Config(TrainingConfig):
    """Schema of a ``lora_finetune_single_device`` config (every key is checked): the keys every training recipe shares
    (``TrainingConfig``, each number with its bound) plus ``lora``, ``packed``, ``merge`` and ``eval``."""

    lora: LoraConfig = field(default_factory=LoraConfig)
    packed: bool = True
    merge: bool = False
    eval: EvalConfig | None = None  # one process only


def before_run(cfg: Config) -> None:
    """Called by ``tune run`` before it writes anything: refuse a non-empty output dir without resume
    and a logger whose optional library is missing."""
    from ft_recipes._metrics import check_loggers
    from ft_recipes._train import check_output_dir

    check_output_dir(cfg.output_dir, cfg.resume)
    check_loggers(cfg.loggers)


@dataclass
class Run(TrainingState):
    """The one training setup's state plus what this recipe saves beside the adapter: the base model's
    HF directory (PEFT names it)."""

    base_path: str = ""


def setup(cfg: Config) -> Run:
    """The one training setup (``_training_setup.setup_training``: device and world, precision, data,
    the model streamed into its final form, attention -> activation checkpointing -> compile ->
    sharding -> optimizer -> schedule -> resume); this recipe's own parts: the adapters in the final
    form, the eval file checked before the model loads, and a GGUF base written as an HF directory
    beside the adapter (removed again if the setup fails)."""
    from dataclasses import fields

    import ft_models
    import ft_peft
    from ft_recipes import _train
    from ft_recipes._assets import resolve_path
    from ft_recipes._training_setup import setup_training
    from ft_recipes.errors import UserError
    from ft_recipes.training import apply_precision

    lc = cfg.lora

    def check_eval(world: Any) -> None:
        if world.sharded and cfg.eval is not None:
            raise UserError("eval: greedy evaluation runs in one process; remove eval or run `tune run eval`")
        # After the data (a dataset component may write the eval file, as the demo's does), before the
        # model: a missing or malformed eval.data stops the run here, not once training is over.
        _train.check_eval_data(cfg.eval)

    def final_form(policy: Any, world: Any) -> Any:
        # QLoRA dequantises to the run's compute dtype: fp32 runs stay fp32, bf16-mixed computes in bf16.
        quantize = None
        if lc.quantize is not None:
            quantize = ft_peft.QuantConfig(lc.quantize, compute_dtype=policy.compute_dtype)

        def prepare(model: Any) -> None:
            # On the meta device, before any weight is read: the checkpoint then streams straight in.
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

        return prepare

    base_path = str(resolve_path(cfg.model["path"]).resolve())

    def write_base(model: Any, tokenizer: Any) -> Any:
        nonlocal base_path
        if ft_models.checkpoint_format(base_path) == "hf":
            return None
        # PEFT needs an HF base: rank 0 writes it beside the adapter, once.
        base_dir = Path(cfg.output_dir) / "base"
        written = None
        if not (base_dir / "config.json").is_file() and is_main_process():
            _train.save_base_hf_dir(base_path, tokenizer, base_dir)
            written = base_dir
        _barrier()  # the other ranks read it after rank 0 wrote it
        base_path = str(base_dir.resolve())
        return (lambda: shutil.rmtree(written, ignore_errors=True)) if written is not None else None

    state = setup_training(
        cfg, "lora", final_form=final_form, trainable_only=True, after_data=check_eval, after_load=write_base
    )
    return Run(**{f.name: getattr(state, f.name) for f in fields(state)}, base_path=base_path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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
        progress(f"[lora] adapter: {out / 'adapter'} (base {run.base_path})")
    if run.cfg.merge and _train.save_merged_hf_dir(run.model, run.tokenizer, out / "merged") is not None:
        progress(f"[lora] merged model: {out / 'merged'}")


def main(cfg: Config) -> None:
    """setup -> (evaluate the base) -> train -> (evaluate the result) -> save -> cleanup."""
    from ft_recipes import _distributed, _train

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
        save(run)
    del run  # cleanup: the model and loader worker processes go with it
    _distributed.finish()
