"""Metric logging of the training recipes: a tqdm bar plus the loggers a config names.

Every logged step is one record (``step``, ``loss``, ``lr``, ... and, at validation steps,
``val_loss`` / ``val_tokens``) handed to each :class:`MetricLogger`: ``jsonl`` (one JSON line per
record in ``output_dir/metrics.jsonl``, continued on resume), ``tensorboard`` (event files in ``output_dir/tensorboard``,
one scalar per numeric key, extra ``ft-recipes[tensorboard]``) and ``wandb`` (Weights & Biases, run
files under ``output_dir/wandb``; ``WANDB_MODE=offline`` keeps them local; extra ``ft-recipes[wandb]``).
The optional libraries are imported only when their logger is chosen; a missing one is a one-line
error naming the extra, raised by :func:`check_loggers` before the run writes anything.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ft_recipes.errors import MissingExtraError

__all__ = [
    "LOGGERS",
    "METRICS",
    "JsonlLogger",
    "MetricLogger",
    "MetricsLog",
    "TensorBoardLogger",
    "WandbLogger",
    "check_loggers",
]

METRICS = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Logger name -> (module it needs, extra that installs it); jsonl needs nothing.
LOGGERS: dict[str, tuple[str, str] | None] = {
    "jsonl": None,
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


class MetricLogger(Protocol):
    """Something that records one step's metrics (a file, a dashboard)."""

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Record ``record`` (metric name -> number) as optimizer step ``step``."""

    def close(self) -> None:
        """Flush and release what the logger holds."""


def check_loggers(names: Sequence[str]) -> None:
    """Import each chosen logger's library now, so a missing extra fails before anything is written.

    Raises:
        MissingExtraError: A chosen logger's library is not installed (names the extra).
    """
    for name in names:
        need = LOGGERS[name]
        if need is None:
            continue
        module, extra = need
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtraError(
                f"loggers: {name!r} needs the {module} package; install ft-recipes[{extra}]"
            ) from e


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``record`` except ``step`` (bools and strings are not scalars)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _step_of(line: str) -> int | None:
    """The ``step`` of one metrics line; None for a line that is not a complete record (a torn write)."""
    if not line.endswith("\n"):
        return None
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class JsonlLogger:
    """One JSON line per record in ``output_dir/metrics.jsonl``; a resumed run continues the file.

    Resuming from step ``start_step`` first drops the records of later steps (logged by an interrupted
    run after its last checkpoint; they are about to be redone) and any torn last line, rewriting the
    file atomically, so the file reads like an uninterrupted run's.
    """

    def __init__(self, output_dir: str | Path, start_step: int = 0) -> None:
        path = Path(output_dir) / METRICS
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            steps = [_step_of(line) for line in lines]
            kept = [
                line
                for line, step in zip(lines, steps, strict=True)
                if step is not None and step <= start_step
            ]
            if len(kept) != len(lines):
                from ft_dist import write_atomic  # imports torch: only when a file is rewritten

                write_atomic(path, "".join(kept).encode("utf-8"))
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Write ``record`` as one line and flush it (a killed run keeps every logged step)."""
        self.file.write(json.dumps(dict(record)) + "\n")
        self.file.flush()

    def close(self) -> None:
        """Close the file."""
        self.file.close()


class TensorBoardLogger:
    """TensorBoard event files in ``output_dir/tensorboard``, one scalar per numeric metric.

    A resumed run purges events at and after its first step, so steps logged by an interrupted run
    after its last checkpoint are not shown twice.
    """

    def __init__(self, output_dir: str | Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(Path(output_dir) / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None
        )

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Add every numeric entry of ``record`` as a scalar at ``step``."""
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run with its files under ``output_dir/wandb`` (the run's config attached)."""

    def __init__(
        self, output_dir: str | Path, project: str, name: str | None, config: Mapping[str, Any]
    ) -> None:
        import wandb

        self.run = wandb.init(project=project, name=name, dir=str(output_dir), config=dict(config))

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Log every numeric entry of ``record`` at ``step``."""
        self.run.log(_scalars(record), step=step)

    def close(self) -> None:
        """Finish the run (in offline mode its files stay in ``output_dir/wandb``)."""
        self.run.finish()


class MetricsLog:
    """The recipes' logging: each record goes to every chosen logger; a tqdm bar on stderr follows it.

    Args:
        output_dir: The run's output directory.
        total_steps: Optimizer steps of the run (the bar's length).
        start_step: The step the run starts after (non-zero when resumed).
        loggers: Names from :data:`LOGGERS`.
        wandb_project: W&B project (``wandb`` logger).
        wandb_name: W&B run name (``wandb`` logger; None: W&B picks one).
        config: The run's resolved config, attached to the W&B run.
    """

    def __init__(
        self,
        output_dir: str,
        total_steps: int,
        start_step: int,
        loggers: Sequence[str] = ("jsonl",),
        *,
        wandb_project: str = "ft",
        wandb_name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        from tqdm import tqdm

        check_loggers(loggers)
        self.loggers: list[MetricLogger] = []
        try:
            for name in dict.fromkeys(loggers):  # once each, in the given order
                if name == "jsonl":
                    self.loggers.append(JsonlLogger(output_dir, start_step))
                elif name == "tensorboard":
                    self.loggers.append(TensorBoardLogger(output_dir, start_step))
                else:
                    self.loggers.append(WandbLogger(output_dir, wandb_project, wandb_name, config or {}))
        except BaseException:
            self.close_loggers()
            raise
        self.bar = tqdm(
            total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True
        )

    def log(self, record: Mapping[str, Any]) -> None:
        """Hand ``record`` (with its ``step``) to every logger and advance the bar."""
        for logger in self.loggers:
            logger.log(record, int(record["step"]))
        self.bar.set_postfix(
            loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
        )
        self.bar.update(1)

    def print(self, line: str) -> None:
        """A line on stdout that does not break the bar (validation results)."""
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close_loggers(self) -> None:
        """Close every logger, even if one fails."""
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as e:  # closing the others matters more than one logger's failure
                errors.append(e)
        self.loggers = []
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Close the loggers and the bar."""
        self.bar.close()
        self.close_loggers()
