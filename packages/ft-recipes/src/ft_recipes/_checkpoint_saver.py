"""The training loop's intermediate checkpoints, written blocking or in the background.

:func:`save_checkpoint` writes ``output_dir/checkpoints/step_N`` and returns when it is complete.
:class:`CheckpointSaver` is what the loop holds: with ``checkpoint.async_save`` it starts each save with
``ft_dist.save_checkpoint_async`` (the state is copied to host memory before it returns, so the next
optimizer step may change the live tensors) and keeps at most one save in flight: the next save and
the end of training wait for the previous one, and each step's end publishes it as soon as every rank's
write finished (a collective; the marker is written only then). A write that failed in the background
surfaces at that wait as the same one-line :class:`~ft_recipes.errors.CheckpointSaveError` a blocking
save raises, with the last complete checkpoint kept and no ``step_N`` half written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

import ft_dist
from ft_recipes.errors import CheckpointSaveError

__all__ = ["CHECKPOINTS", "CheckpointSaver", "save_checkpoint"]

CHECKPOINTS = "checkpoints"


def _failed(root: Path, error: BaseException) -> CheckpointSaveError:
    """The one-line error of a failed save, naming the checkpoint that is kept."""
    last = ft_dist.latest_checkpoint(root)
    kept = f"the last complete checkpoint {last} is kept" if last else "no earlier checkpoint exists"
    return CheckpointSaveError(f"checkpoint: {' '.join(str(error).split())}; {kept}")


def save_checkpoint(output_dir: str, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write ``output_dir/checkpoints/step_{step}`` atomically (with this rank's RNG), then prune and tidy.

    Raises:
        CheckpointSaveError: The write failed (disk full, permissions); the newest complete checkpoint
            is untouched and named in the message, and nothing is pruned.
    """
    root = Path(output_dir) / CHECKPOINTS
    rng = ft_dist.rng_state()
    try:
        path = ft_dist.save_checkpoint(root, step, app_state=state, rank_state=rng, keep_last=keep_last)
    except (ft_dist.CheckpointError, OSError) as e:
        raise _failed(root, e) from e
    return path


class CheckpointSaver:
    """The run's checkpoint writer: blocking, or one background save at a time (module docstring).

    Args:
        output_dir: The run's output directory (checkpoints go to its ``checkpoints/``).
        keep_last: Complete checkpoints kept after each save.
        async_save: Write in the background (``checkpoint.async_save``).

    Every method is called at the same point on every rank (they are collectives with several ranks).
    """

    def __init__(self, output_dir: str, keep_last: int, async_save: bool = False) -> None:
        self.root = Path(output_dir) / CHECKPOINTS
        self.output_dir, self.keep_last, self.async_save = output_dir, keep_last, async_save
        self._pending: ft_dist.PendingCheckpoint | None = None

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Checkpoint ``state`` as ``step_{step}``: first wait for the save in flight, then write it
        (blocking) or start writing it (``async_save``; complete later, see :meth:`wait`).

        Raises:
            CheckpointSaveError: This save or the one in flight failed.
        """
        self.wait()
        if not self.async_save:
            save_checkpoint(self.output_dir, step, state, self.keep_last)
            return
        try:
            self._pending = ft_dist.save_checkpoint_async(
                self.root, step, app_state=state, rank_state=ft_dist.rng_state(), keep_last=self.keep_last
            )
        except (ft_dist.CheckpointError, OSError) as e:
            raise _failed(self.root, e) from e

    def poll(self) -> None:
        """Publish the save in flight if every rank's write has finished (a step's end); else nothing.

        Raises:
            CheckpointSaveError: The write in flight failed.
        """
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        try:
            if not pending.done():
                self._pending = pending
        except ft_dist.CheckpointError as e:
            raise _failed(self.root, e) from e

    def wait(self) -> Path | None:
        """Wait for the save in flight and publish it (before the next save, at the end of training);
        returns its directory, None when nothing was in flight.

        Raises:
            CheckpointSaveError: The write failed; its temporary directory is removed, the last complete
                checkpoint is kept.
        """
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        try:
            return pending.wait()
        except ft_dist.CheckpointError as e:
            raise _failed(self.root, e) from e

    def abandon(self) -> None:
        """After an error elsewhere: in one process, finish the save in flight if it can (its errors give
        way to the one being raised); with several ranks, leave it unpublished (the other ranks may be
        gone: waiting would be a collective), a temporary directory the next resume tidies."""
        if self._pending is None:
            return
        d = torch.distributed
        if d.is_available() and d.is_initialized() and d.get_world_size() > 1:
            self._pending = None
            return
        with contextlib.suppress(CheckpointSaveError):
            self.wait()
