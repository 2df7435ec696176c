"""Validation loss during training: the training loss's token normalisation over a held-out split.

The validation loss of a step is the cross-entropy summed over every trained token of the split (or
its first ``max_batches`` batches) divided by their count: the same ``linear_cross_entropy`` and the
same label mask as training, no gradients, dropout off. Averaging per-batch means instead would weight
the tokens of short batches more, and differ from the training loss's definition.
"""

from __future__ import annotations

from typing import Any

import torch

import ft_data
import ft_models
from ft_recipes._progress import progress
from ft_recipes.config import instantiate
from ft_recipes.errors import UserError
from ft_recipes.training import IGNORE_INDEX, batch_loss, prepare_batch

__all__ = ["build_validation_loader", "check_trained_tokens", "validation_due", "validation_loss"]


def check_trained_tokens(dataset: Any, key: str) -> None:
    """Refuse a dataset whose loss mask leaves nothing to train on (it would report a loss of 0).

    Raises:
        UserError: The dataset's report counts no trained token.
    """
    report = getattr(dataset, "report", None)
    if report is not None and report.trained_tokens == 0:
        raise UserError(
            f"{key}: {report.source}: no trained token in its {report.examples} examples "
            "(every label is masked; check train_on and the roles)"
        )


def build_validation_loader(
    validation: Any, tokenizer: Any, *, batch_size: int, max_seq_len: int, packed: bool
) -> Any:
    """The validation split's loader: rows in dataset order (no shuffle), packed like the training rows.

    Args:
        validation: The recipe's ``ValidationConfig`` (``dataset``, ``every_n_steps``, ``max_batches``,
            ``batch_size``: null takes ``batch_size``).
        tokenizer: The run's tokenizer.
        batch_size: The training batch size.
        max_seq_len: Row length (as in training).
        packed: Pack several examples per row (as in training).

    Raises:
        UserError: A count that is not positive, or a split with no trained token.
    """
    for key in ("every_n_steps", "max_batches", "batch_size"):
        value = getattr(validation, key)
        if value is not None and value < 1:
            raise UserError(f"validation.{key}: must be at least 1, got {value}")
    dataset = instantiate(
        validation.dataset,
        key="validation.dataset",
        allow_any=True,
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
    )
    progress(f"[data] validation: {dataset.report}")
    check_trained_tokens(dataset, "validation.dataset")
    return ft_data.Loader(
        dataset,
        batch_size=validation.batch_size or batch_size,
        max_seq_len=max_seq_len,
        packed=packed,
        shuffle=False,
        pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0,
    )


def validation_due(every_n_steps: int, step: int, total_steps: int) -> bool:
    """Validate every ``every_n_steps`` optimizer steps and after the last one."""
    return step % every_n_steps == 0 or step == total_steps


def validation_loss(
    model: ft_models.CausalLM, loader: Any, max_batches: int | None, device: torch.device
) -> tuple[float, int]:
    """Mean cross-entropy per trained token over the validation split, without gradients or dropout.

    Every row of the split is read in order, the last batch may be smaller (nothing is dropped); with
    ``max_batches`` only the first ones. The loss is the same ``linear_cross_entropy`` and mask as
    training, summed over all batches and divided once by their trained-token count (a mean of
    per-batch means would weight short batches' tokens more).

    Returns:
        (loss per trained token, trained tokens).
    """
    rows = loader.rows(0)
    chunks = [rows[i : i + loader.batch_size] for i in range(0, len(rows), loader.batch_size)]
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for chunk in chunks[:max_batches]:
                b = ft_data.collate_rows(
                    [[loader.dataset[i] for i in row] for row in chunk],
                    pad_id=loader.pad_id,
                    length=loader.max_seq_len if loader.packed else None,
                )
                trained = int((b["labels"] != IGNORE_INDEX).sum())
                if trained == 0:
                    continue
                # normalizer=1: the batch's summed loss; the division happens once, over all batches.
                total += float(batch_loss(model, prepare_batch(b, device), normalizer=1))
                tokens += trained
    finally:
        model.train(was_training)
    if tokens == 0:
        raise UserError(f"validation.max_batches: the first {max_batches} batches hold no trained token")
    return total / tokens, tokens
