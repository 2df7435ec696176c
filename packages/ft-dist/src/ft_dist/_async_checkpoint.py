"""Checkpoints written in the background while training goes on (DCP's ``async_save``), still atomic.

:func:`save_checkpoint_async` copies the state to host memory (DCP's staging: the model, optimizer and
every tensor are copied, the plain values snapshotted), writes this rank's sidecar, and hands the
files to a writer thread; training continues at once. The checkpoint is *not* complete then: its
files land in ``.tmp-step_N`` and nothing names it. Only when every rank's write has finished does
:meth:`PendingCheckpoint.done` or :meth:`~PendingCheckpoint.wait` run the same last phases as a
blocking save (:func:`~ft_dist.save_checkpoint`): rank 0 writes the completion marker inside the
temporary directory and renames it to ``step_N``, then prunes. A kill before that leaves a
``.tmp-step_N`` that the next resume tidies away, never a ``step_N`` without all its files.

The writer thread's collectives (DCP's plan exchange) run on a process group of their own (gloo,
created on the first asynchronous save on every rank), so they never interleave with the training
thread's collectives on the default group.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.stateful import Stateful

from ft_dist._checkpointer import _agree, _dist_on, _Save

__all__ = ["PendingCheckpoint", "save_checkpoint_async"]

# The writer threads' process group, made once per default process group (keyed by its identity).
_GROUPS: dict[int, dist.ProcessGroup] = {}


def _writer_group() -> dist.ProcessGroup | None:
    if not _dist_on():
        return None
    key = id(dist.group.WORLD)
    if key not in _GROUPS:
        group = dist.new_group(backend="gloo")
        assert isinstance(group, dist.ProcessGroup)  # every rank is a member
        _GROUPS[key] = group
    return _GROUPS[key]


def _snapshot(value: Any) -> Any:
    """``value`` with every container copied and every non-tensor leaf deep-copied (tensors are staged
    by DCP): a counter dict the loop keeps updating must not reach the writer thread as it is then."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_snapshot(v) for v in value)
    return copy.deepcopy(value)


class PendingCheckpoint:
    """A checkpoint being written in the background; it becomes ``step_N`` once every rank finished.

    Call :meth:`done` at the same points on every rank (a step's end) or :meth:`wait`; both are
    collectives. After either published it, further calls return at once.
    """

    def __init__(self, save: _Save, future: Future[Any]) -> None:
        self._save = save
        self._future = future
        self._published: Path | None = None

    @property
    def path(self) -> Path:
        """The directory the checkpoint gets when it is published (``{directory}/step_{step}``)."""
        return self._save.final

    def done(self) -> bool:
        """Whether it is published; publishes it when every rank's write has finished (all ranks)."""
        if self._published is not None:
            return True
        if not _agree(self._future.done()):
            return False
        self.wait()
        return True

    def wait(self) -> Path:
        """Wait for this rank's write, then publish and prune as a blocking save does (all ranks).

        Raises:
            CheckpointError: The write failed on any rank; the temporary directory is removed and the
                earlier checkpoints are untouched.
        """
        if self._published is not None:
            return self._published
        try:
            self._future.result()
            error = None
        except BaseException as e:  # DCP wraps failures in CheckpointException, a BaseException
            error = e
        self._save.phase(lambda: None, everywhere=True, error=error)
        self._published = self._save.finish()
        return self._published


def save_checkpoint_async(
    directory: str | os.PathLike[str],
    step: int,
    *,
    app_state: Mapping[str, Any],
    rank_state: Mapping[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
) -> PendingCheckpoint:
    """Start writing ``{directory}/step_{step}`` in the background; call on every rank.

    Arguments as :func:`~ft_dist.save_checkpoint`. The state is copied before this returns, so training
    may change it right away. Finish an earlier pending checkpoint first (its :meth:`~PendingCheckpoint.wait`).

    Returns:
        The pending checkpoint: publish it with :meth:`~PendingCheckpoint.done` (non-blocking, at step
        ends) or :meth:`~PendingCheckpoint.wait` (before the next save and before the process ends).

    Raises:
        CheckpointError: The temporary directory or the sidecar could not be written, or the state
            could not be copied; on every rank.
    """
    save = _Save(directory, step, rank_state, keep_last)
    save.phase(save.prepare, everywhere=False)
    state = _snapshot({k: v.state_dict() if isinstance(v, Stateful) else v for k, v in app_state.items()})
    started: list[Future[Any]] = []

    def start() -> None:
        save.write_sidecar()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            warnings.filterwarnings("ignore", message=".*experimental.*")
            future = dcp.async_save(
                state,
                storage_writer=FileSystemWriter(save.tmp, sync_files=True),
                process_group=_writer_group(),
                no_dist=not _dist_on(),
            )
        started.append(future if isinstance(future, Future) else future.upload_completion)

    save.phase(start, everywhere=True)
    return PendingCheckpoint(save, started[0])
