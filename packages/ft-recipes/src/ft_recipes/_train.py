"""Steps shared by every training recipe, one implementation each, so no feature differs between recipes.

A recipe file reads as setup -> train -> save -> cleanup and calls these: the output-directory rule,
model + tokenizer loading and checks, the data path (dataset -> packed rows -> batches, optionally read
by worker processes), the token-normalised forward/backward over one accumulation window, the optimizer
step with clipping, checkpoints (``ft_dist``) and resume, validation, metrics (``_metrics``: tqdm + the
configured loggers) and the final outputs.

Gradient accumulation follows the rule that a step's loss is the mean over every trained token of the
window: each micro-batch's summed loss is divided by the window's trained-token count (not by its own),
so 8 x 1 and 2 x 4 give the same gradients whatever the lengths.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import ft_data
import ft_dist
import ft_models
from ft_recipes._assets import resolve_path
from ft_recipes._checkpoint_saver import CHECKPOINTS, CheckpointSaver, save_checkpoint
from ft_recipes._export import release_optimizer, save_base_hf_dir, save_hf_dir, save_merged_hf_dir
from ft_recipes._memory import peak_memory_mib, reset_peak_memory
from ft_recipes._metrics import METRICS, MetricsLog
from ft_recipes._progress import is_main_process, progress
from ft_recipes._setup import load_model
from ft_recipes._validation import (
    build_validation_loader,
    check_trained_tokens,
    validation_due,
    validation_loss,
)
from ft_recipes.config import instantiate
from ft_recipes.errors import CheckpointLoadError, UserError
from ft_recipes.training import IGNORE_INDEX, batch_loss, clip_grad_norm, prepare_batch
from ft_recipes.training.errors import TrainingDivergedError

__all__ = [
    "METRICS",
    "CheckpointSaver",
    "MetricsLog",
    "WindowStep",
    "build_loader",
    "build_validation_loader",
    "check_eval_data",
    "check_output_dir",
    "end_step",
    "forward_backward",
    "global_sum",
    "load_model",
    "load_tokenizer",
    "micro_batches",
    "optimizer_step",
    "peak_memory_mib",
    "release_optimizer",
    "report_eval",
    "resume_checkpoint",
    "run_eval",
    "save_base_hf_dir",
    "save_checkpoint",
    "save_hf_dir",
    "save_merged_hf_dir",
    "seed_everything",
    "sft_window",
    "train",
    "validation_due",
    "validation_loss",
]

# The counter recording a run's global batch in rows (batch_size x ranks x accumulation), checked on resume.
GLOBAL_BATCH = "global_batch"
# The resolved config a run writes at the end of its setup: a directory holding nothing else (a run that
# stopped before its first checkpoint or output) may be started again without `resume`.
_OWN_FILES = {"config.yaml"}


def check_output_dir(output_dir: str, resume: str | None) -> None:
    """Refuse a non-empty output directory unless the run resumes (nothing is overwritten by accident),
    and a ``resume`` directory that is not a complete checkpoint, before anything is loaded or written.

    Raises:
        UserError: ``output_dir`` holds files and ``resume`` is not set, or ``resume`` names a directory
            that is not a complete ft checkpoint.
    """
    if resume not in (None, "auto") and not ft_dist.is_checkpoint(Path(resume).expanduser()):
        raise UserError(f"resume: {resume}: not a complete ft checkpoint (no {ft_dist.MARKER})")
    path = Path(output_dir).expanduser()
    if resume is None and path.is_dir() and any(p.name not in _OWN_FILES for p in path.iterdir()):
        raise UserError(
            f"output_dir: {output_dir} is not empty; pass resume=auto to continue it or pick another"
        )


def load_tokenizer(tokenizer_node: Mapping[str, Any]) -> Any:
    """The tokenizer from its config node (``load_tokenizer``)."""
    return instantiate(tokenizer_node, key="tokenizer", allow_any=True)


def build_loader(
    dataset_node: Mapping[str, Any],
    tokenizer: Any,
    *,
    batch_size: int,
    max_seq_len: int,
    seed: int,
    packed: bool,
    shuffle: bool,
    accumulation: int,
    epochs: int,
    max_steps: int | None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Any, int]:
    """Tokenise the dataset (ft-data caches it) and build this rank's loader; returns (loader, optimizer
    steps). Every rank reads the same global order; ``batch_size`` is per rank.

    Raises:
        UserError: The data gives no complete optimizer step.
    """
    dataset = instantiate(
        dataset_node, key="dataset", allow_any=True, tokenizer=tokenizer, max_seq_len=max_seq_len
    )
    progress(f"[data] {dataset.report}")
    check_trained_tokens(dataset, "dataset")
    loader = ft_data.Loader(
        dataset,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        seed=seed,
        packed=packed,
        shuffle=shuffle,
        pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0,
        world_size=world_size,
        rank=rank,
    )
    per_epoch = loader.steps_per_epoch() // accumulation
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    if total <= 0:
        raise UserError(
            f"dataset: {len(dataset)} examples give no complete step of batch_size={batch_size} x "
            f"gradient_accumulation_steps={accumulation}"
            + (f" x {world_size} ranks" if world_size > 1 else "")
        )
    return loader, total


def micro_batches(loader: Any, num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches from the loader's position on, across epochs, forever (ft-data's
    ``Loader.batches``: a rank's rows are a pure function of the global order, world size and rank, and
    the loader advances its own position, so saving ``loader.state_dict()`` between optimizer steps is
    exact whatever ``num_workers`` prefetched)."""
    return loader.batches(num_workers)  # type: ignore[no-any-return]


def forward_backward(
    model: ft_models.CausalLM,
    window: list[dict[str, torch.Tensor]],
    device: torch.device,
    scaler: Any = None,
) -> tuple[float, int, int]:
    """Forward and backward over one accumulation window with the window-normalised loss.

    Args:
        model: The model (train mode; sharded or not); gradients accumulate into its parameters.
        window: This rank's micro-batches with ``input_ids``, ``labels``, ``position_ids``,
            ``document_ids`` [b, s].
        device: Where to compute.
        scaler: A ``GradScaler`` (fp16) or None.

    Returns:
        (the window's mean loss per trained token, trained tokens, non-padding tokens), each over every
        data-parallel rank.

    The normaliser is the window's trained tokens summed over every rank (``ft_dist.global_count``,
    one all-reduce; the count itself in one process), so each token weighs the same whatever rank and
    micro-batch it is in; a sharded model reduces its gradients once, on the last micro-batch. Nothing
    inside the window waits for the device: the counts and each micro-batch's flags are read from the
    CPU batches before they move (``prepare_batch``), the losses are summed on the device, and the sum
    is read once, after the last backward.
    """
    mine = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in window)
    normalizer = ft_dist.global_count(mine)
    real = ft_dist.global_count(sum(int((b["document_ids"] != -1).sum()) for b in window))
    if normalizer == 0:
        raise UserError("dataset: an accumulation window has no trained token (check the loss mask)")
    total = torch.zeros((), dtype=torch.float32, device=device)
    for i, b in enumerate(window):
        ft_dist.set_gradient_sync(model, i == len(window) - 1)
        loss = batch_loss(model, prepare_batch(b, device), normalizer=normalizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
    return float(global_sum(total)), normalizer, real  # the one read, after the last backward


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` (a tensor of sums) summed over every rank; ``value`` itself in one process."""
    d = torch.distributed
    if d.is_available() and d.is_initialized() and d.get_world_size() > 1:
        value = value.to(ft_dist.collective_device())
        d.all_reduce(value)
    return value


WindowStep = Callable[[list[dict[str, torch.Tensor]]], tuple[float, dict[str, Any], int]]
"""One accumulation window's forward and backward: this rank's micro-batches -> (the window's loss, the
recipe's own figures for the step's record, non-padding tokens), each over every rank. What
distinguishes SFT (:func:`sft_window`) from preference training (``_preference_steps``) in the one
loop, :func:`train`."""


def sft_window(run: Any) -> WindowStep:
    """The token-normalised SFT window (:func:`forward_backward`); records ``trained_tokens``."""

    def step(window: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, Any], int]:
        loss, trained, real = forward_backward(run.model, window, run.device, run.scaler)
        return loss, {"trained_tokens": trained}, real

    return step


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_norm: float | None,
    scaler: Any = None,
    *,
    step: int = 0,
    output_dir: str = ".",
) -> float:
    """Clip, step the optimizer and the LR schedule, zero the gradients; returns the pre-clip norm.

    Raises:
        TrainingDivergedError: The gradient norm is not finite (nothing is stepped).
    """
    if scaler is not None:
        scaler.unscale_(optimizer)
    # A sharded model's gradients are DTensor slices: one global norm over them (ft_dist's).
    clip = ft_dist.clip_grad_norm_ if ft_dist.is_sharded(model) else clip_grad_norm
    norm = float(clip(model.parameters() if ft_dist.is_sharded(model) else model, max_norm))
    if not math.isfinite(norm) and scaler is None:
        raise diverged(step, "gradient norm", norm, output_dir)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def diverged(step: int, what: str, value: float, output_dir: str) -> TrainingDivergedError:
    """The error that stops a run on a non-finite loss or norm, naming where its last good checkpoint is."""
    return TrainingDivergedError(
        f"step {step}: {what} is {value}; stopped before the optimizer step, the last good checkpoint "
        f"is kept in {Path(output_dir) / CHECKPOINTS}"
    )


def seed_everything(seed: int) -> None:
    """Seed every global generator a checkpoint's RNG sidecar records (``ft_dist.rng_state``): torch's
    (adapter init, dropout), Python's and NumPy's legacy one, so two runs with one seed save the same
    state; loaders own their generators. Python and NumPy otherwise start from OS entropy."""
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # its seed words are 32-bit; a seed may hold 64 bits


def app_state(
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    loader: Any,
    counters: dict[str, int],
    lora: bool,
    scaler: Any = None,
) -> dict[str, Any]:
    """What a checkpoint holds (DCP keys): weights or adapter + optimizer, schedule, loader, counters,
    and with fp16 the gradient scaler (its scale and growth tracker), so a resumed run scales alike."""
    state = {
        "train": ft_dist.ModelOptimizerState(model, optimizer, trainable_only=lora),
        "scheduler": scheduler,
        "loader": loader,
        "counters": counters,
    }
    if scaler is not None:
        state["scaler"] = scaler
    return state


def resume_checkpoint(
    output_dir: str, resume: str | None, state: dict[str, Any], keep_last: int | None = None
) -> Path | None:
    """Load ``resume`` (``auto``: the newest complete checkpoint, none is a fresh start) into ``state``.

    The checkpoint may come from another world size (4 -> 2 -> 1 ranks, HSDP -> FSDP): DCP reshards the
    weights and the optimizer state onto this run's mesh, and the loader's position is a count of global
    rows, which this launch continues from (:func:`check_position` says when it cannot). A rank the
    saved run did not have takes rank 0's RNG state (:func:`rank_rng_state`).

    Then the run's checkpoint root is tidied (``ft_dist.clean_checkpoints``): what a killed save or prune
    left is removed, and complete checkpoints beyond ``keep_last`` are pruned, never the one resumed from.
    ``keep_last=None`` uses the value recorded by the save that wrote the checkpoint resumed from (so a
    run killed between its last save and that save's prune ends with ``keep_last`` checkpoints).

    Raises:
        UserError: ``resume`` names a directory that is not a complete checkpoint.
        CheckpointLoadError: The checkpoint is incomplete, truncated or does not fit this run (its data
            position is not a whole number of this launch's global batches, among others); nothing is
            pruned then.
    """
    if resume is None:
        return None
    root = Path(output_dir) / CHECKPOINTS
    if resume == "auto":
        path = ft_dist.latest_checkpoint(root)
        if path is None:
            ft_dist.clean_checkpoints(root)  # a run killed before its first checkpoint: its temp dirs
            return None
    else:
        path = Path(resume).expanduser()
        if not ft_dist.is_checkpoint(path):
            raise UserError(f"resume: {resume}: not a complete ft checkpoint (no {ft_dist.MARKER})")
    counters = state.get("counters", {})
    global_batch = counters.get(GLOBAL_BATCH)  # this launch's; the load replaces it by the saved one
    try:
        if global_batch is not None and f"counters.{GLOBAL_BATCH}" not in _saved_keys(path):
            del counters[GLOBAL_BATCH]  # an older checkpoint: its global batch is unknown, taken as unchanged
        rank_state = ft_dist.load_checkpoint(path, app_state=state)
    except ft_dist.CheckpointError as e:
        raise CheckpointLoadError(f"resume: {e}") from e
    saved_batch = counters.get(GLOBAL_BATCH)
    if global_batch is not None:
        counters[GLOBAL_BATCH] = global_batch
        check_position(path, state["loader"], global_batch, saved_batch)
    rank_state = rank_state if rank_state is not None else rank_rng_state(path)
    if rank_state is not None:
        ft_dist.set_rng_state(rank_state)
    if keep_last is None:
        keep_last = (ft_dist.checkpoint_info(path) or {}).get("keep_last")
    ft_dist.clean_checkpoints(root, keep_last=keep_last, keep=path)
    return path


def _saved_keys(path: Path) -> set[str]:
    """The flattened keys a checkpoint holds (``counters.step``, ...), from its metadata."""
    return set(ft_dist.read_metadata(str(path / ".metadata")).state_dict_metadata)


def check_position(path: Path, loader: Any, global_batch: int, saved_batch: int | None) -> None:
    """Refuse a saved data position this launch cannot continue from, in one line naming the keys.

    The position is the global rows consumed in the current epoch (``ft_data.Loader``), so any world
    size continues the same global order from it as long as it is a whole number of this launch's
    micro-batches (``batch_size`` x ranks). When the global batch (``batch_size`` x ranks x
    ``gradient_accumulation_steps``) differs from the saved run's, the position must also be a whole
    number of the new global batch, so every later optimizer step reads whole new global batches; the
    step counter and the LR schedule go on counting optimizer steps (of the new size). An unchanged
    global batch is always accepted (a window may then straddle an epoch's end exactly as before).

    Raises:
        CheckpointLoadError: The position is not a whole number of this launch's (global) batches.
    """
    ranks = loader.world_size
    micro = loader.batch_size * ranks
    rows, epoch = loader.rows_consumed, loader.epoch
    whole = rows % micro == 0 and (saved_batch in (None, global_batch) or rows % global_batch == 0)
    if whole:
        return
    raise CheckpointLoadError(
        f"resume: {path} stopped {rows} rows into epoch {epoch}, not a whole number of this launch's global "
        f"batches of {global_batch} rows (batch_size={loader.batch_size} x {ranks} ranks x "
        f"gradient_accumulation_steps={global_batch // micro}; saved: {saved_batch} rows); change "
        "batch_size, gradient_accumulation_steps or the number of processes"
    )


def rank_rng_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The RNG state for a rank the saved run did not have (it ran on fewer ranks): rank 0's.

    Every rank of a run starts from the same seeded state (:func:`seed_everything`), so a new rank
    taking rank 0's continues like a rank of a fresh run would; the draws of the uninterrupted run
    (dropout masks over another split of the batch) cannot be repeated at another world size anyway.
    """
    try:
        return ft_dist.read_rank_state(path, 0)
    except ft_dist.CheckpointError as e:
        raise CheckpointLoadError(f"resume: {e}") from e


def resumed_line(tag: str, path: Path, step: int, world_size: int) -> str:
    """The line a resumed run prints: where it resumed, and the saved world size when it differs."""
    saved = (ft_dist.checkpoint_info(path) or {}).get("world_size")
    where = f"[{tag}] resumed from {path} at step {step}"
    if saved in (None, world_size):
        return where
    return f"{where} (saved on {saved} rank{'s' * (saved != 1)}, now {world_size})"


def end_step(
    run: Any, log: Any, step: int, metrics: dict[str, Any], saver: CheckpointSaver | None = None
) -> None:
    """Everything after an optimizer step, the same in every recipe, in this order: a background
    checkpoint published if its write finished, the metrics record (with peak memory), validation when
    due (its loss joins the record), the log, a checkpoint when due.

    Args:
        run: The recipe's ``Run`` (``cfg``, ``loader``, ``device``, ``model``, ``val_loader``,
            ``total_steps``, ``state``; optionally ``validate``, a callable returning the validation
            record's entries, for recipes whose validation is not the token loss).
        log: The run's metrics log.
        step: The optimizer step just taken (1-based).
        metrics: The step's own figures (``loss``, ``lr``, ``grad_norm``, ``trained_tokens``,
            ``tokens_per_s``, ``setup_peak_memory_mib``); the record adds ``peak_memory_mib``, the peak
            since the loop started (``ft_recipes._memory``).
        saver: The loop's checkpoint writer (``checkpoint.async_save``: the save in flight is published
            here once written, and the next save waits for it); None: a blocking save.

    Raises:
        CheckpointSaveError: A checkpoint write failed (this step's, or the one in flight).
    """
    cfg = run.cfg
    if saver is not None:
        saver.poll()
    record = {
        "step": step,
        "epoch": run.loader.epoch,
        **metrics,
        "peak_memory_mib": peak_memory_mib(run.device),
    }
    v = cfg.validation
    validate = getattr(run, "validate", None)  # a recipe's own validation (preference metrics), else SFT's
    if v is not None and validation_due(v.every_n_steps, step, run.total_steps) and validate is not None:
        record.update(validate())
    elif v is not None and validation_due(v.every_n_steps, step, run.total_steps):
        val_loss, val_tokens = validation_loss(run.model, run.val_loader, v.max_batches, run.device)
        record.update(val_loss=val_loss, val_tokens=val_tokens)
        log.print(f"[val] step {step}: loss {val_loss:.4f} over {val_tokens} trained tokens")
    log.log(record)
    every = cfg.checkpoint.every_n_steps
    if (every and step % every == 0) or step == run.total_steps:
        if saver is None:
            save_checkpoint(cfg.output_dir, step, run.state, cfg.checkpoint.keep_last)
        else:
            saver.save(step, run.state)


class _Quiet:
    """The log of a rank other than 0: the figures are global (every rank computes them), rank 0 alone
    prints and writes them."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Nothing: rank 0 logs."""

    def print(self, line: str) -> None:
        """Nothing: rank 0 prints."""

    def close(self) -> None:
        """Nothing to close."""


def train(run: Any, window_step: WindowStep | None = None) -> None:
    """The training loop of every training recipe at every world size: one optimizer step per
    accumulation window until ``total_steps``, then :func:`end_step` (metrics, validation, checkpoint)
    after each. With several ranks every figure is global and rank 0 alone logs; the step runs inside
    ``ft_dist.abort_on_failure`` (by the recipe's ``main``), so one rank's error ends every rank. With
    ``checkpoint.async_save`` checkpoints are written in the background (``CheckpointSaver``, at most
    one in flight); the loop returns once the last one is complete.

    Peak memory is measured from here on (``ft_recipes._memory``): the setup's own peak is read first and
    logged as ``setup_peak_memory_mib`` beside every step's ``peak_memory_mib``.

    Args:
        run: The recipe's ``Run`` (``cfg``, ``counters``, ``loader``, ``model``, ``device``, ``optimizer``,
            ``scheduler``, ``scaler``, ``total_steps``, ``state``, ``val_loader``; ``world`` when it may
            run on several ranks).
        window_step: The window's forward/backward (:data:`WindowStep`); None: SFT's.
    """
    step_window = window_step if window_step is not None else sft_window(run)
    cfg, counters = run.cfg, run.counters
    setup_peak = peak_memory_mib(run.device)
    reset_peak_memory(run.device)
    batches = micro_batches(run.loader, cfg.num_workers)
    log: MetricsLog | _Quiet = (
        MetricsLog(
            cfg.output_dir,
            run.total_steps,
            counters["step"],
            cfg.loggers,
            wandb_project=cfg.wandb.project,
            wandb_name=cfg.wandb.name,
            config=asdict(cfg),
        )
        if is_main_process()
        else _Quiet()
    )
    c = cfg.checkpoint
    saver = CheckpointSaver(cfg.output_dir, c.keep_last, async_save=c.async_save)
    try:
        while counters["step"] < run.total_steps:
            start = time.perf_counter()
            window = [next(batches) for _ in range(cfg.gradient_accumulation_steps)]
            loss, figures, real = step_window(window)
            step = counters["step"] + 1
            if not math.isfinite(loss):
                raise diverged(step, "loss", loss, cfg.output_dir)
            lr = float(run.scheduler.get_last_lr()[0])
            norm = optimizer_step(
                run.model,
                run.optimizer,
                run.scheduler,
                cfg.clip_grad_norm,
                run.scaler,
                step=step,
                output_dir=cfg.output_dir,
            )
            counters["step"] = step
            counters["tokens"] += real
            elapsed = time.perf_counter() - start
            metrics = {"loss": loss, "lr": lr, "grad_norm": norm, **figures}
            metrics.update(tokens_per_s=real / elapsed, setup_peak_memory_mib=setup_peak)
            end_step(run, log, step, metrics, saver)
        saver.wait()  # the last checkpoint is complete before the outputs are written
    except BaseException:
        saver.abandon()
        raise
    finally:
        log.close()


def check_eval_data(cfg: Any) -> None:
    """Read ``cfg.data`` (``cfg``: an ``EvalConfig`` or None) as eval items and find its lm-eval tasks, so a
    missing or malformed file, an unknown task or a missing lm-eval stops the run before it starts
    instead of after training.

    Raises:
        UserError: No data and no task, or the file is missing, unreadable or not prompt/answer JSONL,
            or a task cannot be found or built (the message names the ``eval.`` key).
        MissingExtraError: Tasks are named and lm-evaluation-harness is not installed.
    """
    if cfg is None:
        return
    if cfg.data is None and not cfg.tasks and not cfg.local_tasks:
        raise UserError("eval: nothing to evaluate; give data (prompt/answer JSONL), tasks or local_tasks")
    if cfg.data is not None:
        from ft_recipes.eval import read_items

        read_items(resolve_path(cfg.data), key="eval.data")
    _lm_eval_tasks(cfg)


def _lm_eval_tasks(cfg: Any) -> Any:
    """``cfg``'s lm-eval tasks, found and loaded (None when it names none)."""
    if not cfg.tasks and not cfg.local_tasks:
        return None
    from ft_recipes.eleuther_eval import require_lm_eval, select_tasks

    require_lm_eval("eval.tasks")
    return select_tasks(cfg.tasks, cfg.local_tasks, cfg.include_path, key="eval.")


def run_eval(model: Any, tokenizer: Any, cfg: Any, output_dir: str, name: str) -> float | None:
    """Evaluate the model as ``cfg`` (an ``EvalConfig``) says; ``name`` is ``base`` or ``tuned``.

    ``data``: greedy answers scored by ``cfg.metric``, printed and written to ``eval_{name}.jsonl``;
    returns the score. lm-eval tasks: lm-eval's table printed and its results written to
    ``lm_eval_{name}/results.json`` (what ``tune run eleuther_eval`` writes for a saved model).
    Returns None when there is no ``data``.
    """
    score = None
    if cfg.data is not None:
        from ft_recipes.eval import evaluate, read_items

        items = read_items(resolve_path(cfg.data), key="eval.data")
        result = evaluate(
            model,
            tokenizer,
            items,
            metric=cfg.metric,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
        )
        result.write(Path(output_dir) / f"eval_{name}.jsonl")
        progress(f"[eval] {name} {cfg.metric}: {result.score:.1f} ({len(items)} prompts)", file=sys.stdout)
        score = result.score
    selection = _lm_eval_tasks(cfg)
    if selection is not None:
        from ft_recipes.eleuther_eval import run_lm_eval

        progress(f"[eval] {name}: lm-eval tasks", file=sys.stdout)
        run_lm_eval(
            model,
            tokenizer,
            selection,
            output_dir=Path(output_dir) / f"lm_eval_{name}",
            limit=cfg.limit,
            num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size,
        )
    return score


def report_eval(cfg: Any, base: float | None, tuned: float | None) -> None:
    """Print the before/after line of the exact-match evaluation (when both were measured)."""
    if base is not None and tuned is not None:
        progress(f"[eval] {cfg.metric}: base {base:.1f} -> tuned {tuned:.1f}", file=sys.stdout)
