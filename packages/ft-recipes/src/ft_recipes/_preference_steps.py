"""The preference (DPO) steps every preference recipe shares: reference log-probs, the pair-normalised
forward/backward of an accumulation window, and validation metrics.

The reference is a callable from a collated batch to its summed log-probs ``[2n]``:

* ``adapters_off``: the LoRA model itself with its adapters disabled (``ft_peft.disable_adapters``): no
  second copy of the weights;
* ``frozen``: a frozen copy (full fine-tuning);
* ``precomputed``: a table of every pair's reference log-probs computed once before training
  (:func:`precompute_reference`; with several ranks each computes its share and the table is summed)
  and looked up by the batch's ``pair_index``, so the reference costs nothing per step (and no memory
  for full fine-tuning, where the policy itself before its first step is the reference:
  :func:`policy_reference`).

The window's loss is every micro-batch's summed per-pair loss divided by the window's pair count (all
ranks when distributed: pass ``num_pairs``), so 4 x 1, 2 x 2 and 1 x 4 give the same gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

import ft_dist
from ft_recipes.errors import UserError
from ft_recipes.training import PreferenceLoss, PreferenceStats, preference_loss, sequence_logps

__all__ = [
    "Reference",
    "adapters_off_reference",
    "frozen_reference",
    "policy_reference",
    "precompute_reference",
    "preference_forward_backward",
    "preference_train",
    "preference_validation",
    "preference_window",
    "table_reference",
    "training_kernel_everywhere",
    "validate_preference_run",
]

Reference = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
"""A batch (on the model's device) -> the reference's summed log-probs ``[2n]``, without gradient."""


def adapters_off_reference(model: torch.nn.Module) -> Reference:
    """The LoRA model with its adapters disabled: the base model it started from, without a copy."""
    import ft_peft

    def reference(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), ft_peft.disable_adapters(model):
            return sequence_logps(model, batch).logps

    return reference


def frozen_reference(frozen: torch.nn.Module) -> Reference:
    """A separate frozen model (full fine-tuning)."""
    frozen.eval().requires_grad_(False)

    def reference(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return sequence_logps(frozen, batch).logps

    return reference


def policy_reference(model: torch.nn.Module) -> Reference:
    """The trained model itself, without gradients or dropout: the reference of full fine-tuning when it
    is read before the first step (``precomputed``), so no second model is ever built."""

    def reference(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return sequence_logps(model, batch).logps
        finally:
            model.train(was_training)

    return reference


def training_kernel_everywhere(*models: torch.nn.Module) -> None:
    """Make every attention call of ``models`` pick its kernel as a training call does.

    Under ``attention: auto`` the kernel is chosen per call, and on a CPU in bf16 a call with gradients
    runs the grouped products while one without runs SDPA (``ft_models.auto_attention_kernel``). The
    reference's log-probs are computed without gradients but must equal what the policy's training
    forward computes from the same weights (at step 0 every reward is 0 and the sigmoid loss ln 2), so
    the preference recipes give the policy and its reference ``AutoKernel(grad=True)``: one rule for
    every call, validation included. Other settings name one kernel already and are left as they are.
    """
    import ft_models

    for model in models:
        for module in model.modules():
            if isinstance(module, ft_models.GroupedQueryAttention) and isinstance(
                module.kernel, ft_models.AutoKernel
            ):
                module.kernel = ft_models.AutoKernel(grad=True)


def table_reference(table: torch.Tensor) -> Reference:
    """Precomputed log-probs ``[N, 2]`` (chosen, rejected per pair) looked up by ``pair_index``."""

    def reference(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        rows = table.to(batch["pair_index"].device)[batch["pair_index"]]  # [n, 2]
        return torch.cat([rows[:, 0], rows[:, 1]])  # [2n]

    return reference


def _pair_batches(loader: Any, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Every pair of the loader's dataset once, in dataset order."""
    n = len(loader.dataset)
    for start in range(0, n, batch_size):
        yield loader.batch([[i] for i in range(start, min(start + batch_size, n))])


def _rank_world() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def precompute_reference(
    reference: Reference, loader: Any, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Every pair's reference log-probs ``[N, 2]`` (fp32, on CPU), computed once before training.

    With several ranks the dataset's batches are dealt out in turn (batch ``k`` to rank ``k mod world``)
    and the tables are summed over the ranks: each pair is computed once, by one rank, and the sum adds
    only zeros to it (exact). Every rank runs the same number of forwards, since a sharded model's
    forward needs every rank: a rank left without a batch in the last round repeats the first one and
    discards it.

    Args:
        reference: The live reference (e.g. :func:`adapters_off_reference` before any step).
        loader: The training (or validation) loader; its dataset is read in order, every pair once.
        device: Where to compute.
        batch_size: Pairs per forward.
    """
    n = len(loader.dataset)
    rank, world = _rank_world()
    starts = list(range(0, n, batch_size))
    table = torch.zeros(n, 2, dtype=torch.float32)
    for k in range(rank, -(-len(starts) // world) * world, world):
        mine = k < len(starts)
        start = starts[k] if mine else 0
        batch = loader.batch([[i] for i in range(start, min(start + batch_size, n))])
        logps = reference({key: v.to(device) for key, v in batch.items()}).float().cpu()
        if mine:
            table[batch["pair_index"]] = torch.stack(logps.chunk(2), dim=1)
    if world > 1:
        summed = table.to(ft_dist.collective_device())
        torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
        table = summed.cpu()
    return table


def preference_forward_backward(
    model: torch.nn.Module,
    window: list[dict[str, torch.Tensor]],
    device: torch.device,
    cfg: PreferenceLoss,
    reference: Reference | None,
    *,
    num_pairs: int | None = None,
    scaler: Any = None,
) -> tuple[float, PreferenceStats, int]:
    """Forward and backward of one accumulation window with the pair-normalised preference loss.

    Args:
        model: The policy (train mode); gradients accumulate into its parameters.
        window: Preference micro-batches (``[2n, s]`` tensors and ``pair_index`` ``[n]``).
        device: Where to compute.
        cfg: The loss.
        reference: The reference (None for SimPO).
        num_pairs: Pairs in the window across every rank (default: this window's own count).
        scaler: A ``GradScaler`` (fp16) or None.

    Returns:
        (the window's loss, its metric sums, its non-padding tokens).
    """
    pairs = num_pairs if num_pairs is not None else sum(int(b["pair_index"].numel()) for b in window)
    if pairs <= 0:
        raise UserError("dataset: an accumulation window holds no preference pair")
    total, stats, real = 0.0, PreferenceStats.zero(), 0
    for i, batch in enumerate(window):
        ft_dist.set_gradient_sync(model, i == len(window) - 1)  # a sharded model reduces once
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        ref = None if cfg.reference_free or reference is None else reference(b)
        loss, part = preference_loss(cfg, sequence_logps(model, b), ref, num_pairs=pairs)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(loss.detach())
        stats = stats + part.to_cpu()
        real += int((batch["document_ids"] != -1).sum())
    return total, stats, real


def preference_validation(
    model: torch.nn.Module,
    loader: Any,
    cfg: PreferenceLoss,
    reference: Reference | None,
    device: torch.device,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Loss (mean over pairs) and TRL's metrics on held-out pairs, without gradients or dropout.

    The split is read in order, every pair once (its first ``max_batches`` batches with a limit).

    Returns:
        ``loss`` and :data:`~ft_recipes.training.METRIC_NAMES`, and ``pairs``.
    """
    was_training = model.training
    model.eval()
    total, stats = 0.0, PreferenceStats.zero()
    try:
        with torch.no_grad():
            for k, batch in enumerate(_pair_batches(loader, loader.batch_size)):
                if max_batches is not None and k >= max_batches:
                    break
                b = {key: v.to(device) for key, v in batch.items()}
                ref = None if cfg.reference_free or reference is None else reference(b)
                loss, part = preference_loss(cfg, sequence_logps(model, b), ref, num_pairs=1)
                total += float(loss)
                stats = stats + part.to_cpu()
    finally:
        model.train(was_training)
    pairs = stats.metrics_pairs()
    return {"loss": total / max(pairs, 1), **stats.metrics(), "pairs": float(pairs)}


def validate_preference_run(run: Any, when: str = "") -> dict[str, float]:
    """A preference run's validation (its ``validate``): loss and TRL's metrics on the validation pairs,
    printed on one line (rank 0), returned ``val_``-prefixed for the step's record.

    Args:
        run: The recipe's ``Run`` (``cfg``, ``model``, ``val_loader``, ``loss``, ``val_reference``,
            ``device``; ``world`` when it may run on several ranks).
        when: Printed after ``[val]`` (``"before training: "`` for the figures the run starts from).
    """
    from ft_recipes._progress import progress

    v = run.cfg.validation
    assert v is not None
    result = preference_validation(
        run.model, run.val_loader, run.loss, run.val_reference, run.device, v.max_batches
    )
    progress(
        f"[val] {when}loss {result['loss']:.4f}, reward accuracy {result['rewards/accuracies']:.3f}, "
        f"margin {result['rewards/margins']:.4f} over {int(result['pairs'])} pairs"
    )
    return {f"val_{k}": value for k, value in result.items()}


def preference_window(
    run: Any,
) -> Callable[[list[dict[str, torch.Tensor]]], tuple[float, dict[str, Any], int]]:
    """The pair-normalised window for the one training loop (``_train.train``): the normaliser is the
    window's pairs over every rank (``ft_dist.global_count``), the loss, TRL's metric sums and the
    token count are summed over the ranks, so the record is the whole window's.

    Args:
        run: The recipe's ``Run`` (``model``, ``device``, ``scaler``) plus ``loss`` (a
            :class:`PreferenceLoss`) and ``reference`` (a :data:`Reference` or None).
    """
    import ft_dist
    from ft_recipes._train import global_sum

    def step(window: list[dict[str, torch.Tensor]]) -> tuple[float, dict[str, Any], int]:
        pairs = ft_dist.global_count(sum(int(b["pair_index"].numel()) for b in window))
        loss, stats, real = preference_forward_backward(
            run.model, window, run.device, run.loss, run.reference, num_pairs=pairs, scaler=run.scaler
        )
        total = PreferenceStats(global_sum(stats.sums)).to_cpu()
        loss = float(global_sum(torch.tensor(loss, dtype=torch.float64)))
        real = int(global_sum(torch.tensor(real, dtype=torch.int64)))
        return loss, {"pairs": total.metrics_pairs(), **total.metrics()}, real

    return step


def preference_train(run: Any) -> None:
    """The loop of the preference recipes: SFT's one loop (``_train.train``: optimizer step, metrics,
    validation, checkpoints, resume, rank-0 logging) around the pair-normalised window
    (:func:`preference_window`). A run that validates and starts at step 0 first prints the validation
    figures of its starting point (policy = reference: every reward 0), so the held-out reward accuracy
    reads before and after."""
    from ft_recipes._train import train

    if run.val_loader is not None and run.counters["step"] == 0:
        validate_preference_run(run, "before training: ")  # where the policy starts: the reference
    train(run, preference_window(run))
