"""Intermediate training checkpoints on ``torch.distributed.checkpoint`` (DCP), written atomically.

Layout of one checkpoint, ``{output_dir}/step_{step}/``::

    .metadata, __{r}_{i}.distcp   DCP: app state (model or adapter, optimizer, scheduler, counters)
    rank_{r}.pt                   per-rank sidecar: a flat dict of tensors (RNG states), one per rank
    .ft-checkpoint.json           completion marker: {"format", "step", "world_size"[, "keep_last"]}

DCP keeps one copy of a key that is not sharded, so per-rank values (each rank's RNG) would silently
collapse to rank 0's under FSDP2: they go in the sidecar, loaded with ``torch.load(weights_only=True)``.
DCP works in one process without ``init_process_group``, so a run saved on one device resumes on
several and the reverse.

Atomicity (the usual write-to-temp, fsync, rename protocol): every rank writes into ``.tmp-step_{step}``
beside the target; rank 0 then writes the marker *inside it*, and :func:`~ft_dist._atomic.publish_dir`
fsyncs everything and renames it to ``step_{step}``: that rename is the commit point, so a ``step_N``
directory is complete and marked or does not exist. Pruning renames a checkpoint to ``.del-step_N``
before deleting it. Every state a kill can leave is named (see :mod:`ft_dist._checkpoint_dirs`), and
:func:`clean_checkpoints` (called after each save and on resume) tidies it up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ft_dist._atomic import publish_dir, write_atomic
from ft_dist._checkpoint_dirs import FORMAT, MARKER, checkpoint_info, clean
from ft_dist._safe_io import SafeFileSystemReader, SafeLoadPlanner, read_metadata
from ft_dist.errors import CheckpointError

__all__ = [
    "ModelOptimizerState",
    "clean_checkpoints",
    "load_checkpoint",
    "read_rank_state",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


class ModelOptimizerState:
    """A DCP ``Stateful`` for a model and its optimizer, through DCP's ``get/set_state_dict``.

    Those functions give FQN-keyed optimizer state (not integer ids), so a checkpoint loads into a
    freshly built model and optimizer, sharded or not. ``trainable_only=True`` stores only parameters
    that require grad (the adapter of a LoRA model; the frozen base comes from the base checkpoint).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        trainable_only: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.options = StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)

    def state_dict(self) -> dict[str, Any]:
        """``{"model": ..., "optim": ...}`` (``optim`` empty without an optimizer)."""
        optims = [] if self.optimizer is None else [self.optimizer]
        model_sd, optim_sd = get_state_dict(self.model, optims, options=self.options)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (after DCP filled it in place)."""
        optims = [] if self.optimizer is None else [self.optimizer]
        set_state_dict(
            self.model,
            optims,
            model_state_dict=state_dict["model"],
            optim_state_dict=state_dict["optim"],
            options=self.options,
        )


def _root_cause(error: BaseException) -> BaseException:
    """The first rank's underlying exception inside DCP's ``CheckpointException`` (else ``error``)."""
    if isinstance(error, CheckpointException):
        for failure in error.failures.values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, BaseException):
                return inner
    return error


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _dist_on() else (0, 1)


def _attempt(phase: Callable[[], object]) -> BaseException | None:
    try:
        phase()
    except (OSError, CheckpointException) as e:  # DCP raises CheckpointException (a BaseException)
        return e
    return None


def _agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (a MIN all-reduce; no-op in one process)."""
    if not _dist_on():
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([int(ok)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _detail(error: BaseException | None) -> str:
    cause = _root_cause(error) if error is not None else None
    return f"{type(cause).__name__}: {cause}" if cause is not None else "another rank failed"


def _on_rank0(phase: Callable[[], object], what: str) -> None:
    """Run ``phase`` on rank 0 only; raise ``CheckpointError(what ...)`` on every rank if it failed."""
    rank, _world = _rank_world()
    error = _attempt(phase) if rank == 0 else None
    if not _agree(error is None):
        raise CheckpointError(f"{what} ({_detail(error)})") from error


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    *,
    app_state: Mapping[str, Any],
    rank_state: Mapping[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``{directory}/step_{step}`` atomically, then tidy the root; call on every rank.

    Args:
        directory: the run's checkpoint root (created if missing).
        step: the optimizer step this state follows; names the directory.
        app_state: name -> DCP ``Stateful`` (:class:`ModelOptimizerState`, an LR scheduler) or a plain
            dict of tensors and Python values (step and token counters, the loader position).
        rank_state: this rank's tensors (e.g. :func:`ft_dist.rng_state`); tensors only.
        keep_last: after saving, prune all but this many newest checkpoints (None: keep all); also
            recorded in the marker, so a resume can finish a prune a kill interrupted.

    Returns:
        The checkpoint directory. An existing checkpoint of the same step is replaced.

    Raises:
        CheckpointError: a write failed (disk full, permissions); earlier checkpoints are untouched. Every
            rank raises when any rank failed.
    """
    save = _Save(directory, step, rank_state, keep_last)
    save.phase(save.prepare, everywhere=False)

    def write() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save(
                dict(app_state),
                storage_writer=FileSystemWriter(save.tmp, sync_files=True),
                no_dist=not _dist_on(),
            )
        save.write_sidecar()

    save.phase(write, everywhere=True)
    return save.finish()


class _Save:
    """The phases of one atomic save (module docstring), shared by the blocking and the asynchronous save.

    Each phase ends with every rank agreeing on success (:meth:`phase`), so one rank's failure (a full
    disk) raises on all ranks instead of leaving the others waiting in a barrier.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        step: int,
        rank_state: Mapping[str, torch.Tensor] | None,
        keep_last: int | None,
    ) -> None:
        self.root = Path(directory)
        self.rank, self.world = _rank_world()
        self.step, self.keep_last = step, keep_last
        self.final = self.root / f"step_{step}"
        self.tmp = self.root / f".tmp-step_{step}"
        for key, value in (rank_state or {}).items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"{self.final}: rank_state[{key!r}] is {type(value).__name__}, not a tensor"
                )
        if keep_last is not None and keep_last < 1:
            raise CheckpointError(f"{self.root}: keep_last must be >= 1, got {keep_last}")
        self.sidecar = {k: v.detach().cpu().clone() for k, v in (rank_state or {}).items()}

    def phase(
        self, run: Callable[[], object], *, everywhere: bool, error: BaseException | None = None
    ) -> None:
        """Run ``run`` (on every rank, or on rank 0), then agree; on failure remove the temp directory and
        raise on every rank. ``error``: a failure this rank already had (an asynchronous write's)."""
        if error is None and (everywhere or self.rank == 0):
            error = _attempt(run)
        if not _agree(error is None):
            if self.rank == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise CheckpointError(f"{self.final}: saving failed ({_detail(error)})") from error

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()

    def write_sidecar(self) -> None:
        sidecar = self.sidecar
        write_atomic(self.tmp / f"rank_{self.rank}.pt", lambda f: torch.save(sidecar, f))

    def publish(self) -> None:
        info: dict[str, Any] = {"format": FORMAT, "step": self.step, "world_size": self.world}
        if self.keep_last is not None:
            info["keep_last"] = self.keep_last
        write_atomic(self.tmp / MARKER, json.dumps(info).encode())
        publish_dir(self.tmp, self.final)  # the commit point: step_N appears complete, marker included

    def finish(self) -> Path:
        """Publish (rank 0 writes the marker and renames), then prune; every rank."""
        self.phase(self.publish, everywhere=False)
        log.info("saved checkpoint %s", self.final)
        if self.keep_last is not None:
            keep_last, final = self.keep_last, self.final
            _on_rank0(
                lambda: clean(self.root, keep_last=keep_last, keep=final),
                f"{self.root}: {final.name} saved, pruning failed",
            )
        return self.final


def clean_checkpoints(
    directory: str | os.PathLike[str],
    *,
    keep_last: int | None = None,
    keep: str | os.PathLike[str] | None = None,
) -> None:
    """Tidy a checkpoint root after an interrupted save or prune; call on every rank, with no save in flight.

    Rank 0 removes the temporary and being-deleted directories a kill left, renames back a checkpoint
    that was moved aside for a replacement that never landed, and prunes complete checkpoints beyond
    ``keep_last`` (None: no pruning), never ``keep`` (the one a run resumed from). Only directories ft
    names and writes are touched (see :mod:`ft_dist._checkpoint_dirs`).

    Raises:
        CheckpointError: on every rank, when rank 0 could not delete or rename something.
    """
    _on_rank0(
        lambda: clean(directory, keep_last=keep_last, keep=keep), f"{directory}: tidying checkpoints failed"
    )


def read_rank_state(checkpoint: str | os.PathLike[str], rank: int) -> dict[str, torch.Tensor] | None:
    """Rank ``rank``'s sidecar tensors from a checkpoint, or None when that rank did not save one."""
    path = Path(checkpoint) / f"rank_{rank}.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError on bad files
        raise CheckpointError(f"{path}: unreadable rank state ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: rank state is not a dict of tensors")
    return state


def load_checkpoint(
    checkpoint: str | os.PathLike[str], *, app_state: Mapping[str, Any]
) -> dict[str, torch.Tensor] | None:
    """Load a complete checkpoint into ``app_state`` in place (every rank); return this rank's sidecar.

    ``app_state`` has the same names as at save time, holding freshly built objects (Statefuls are
    loaded through ``load_state_dict``; plain dicts are filled in place). The world size may differ
    from the saving run's (DCP reshards); a rank that had no sidecar gets None (logged at INFO level) and
    its caller decides what it restores (:func:`read_rank_state` reads another rank's).

    Raises:
        CheckpointError: the directory is missing, incomplete (no marker) or does not fit ``app_state``.
        UnsafeCheckpointError: the metadata names objects outside DCP's metadata types.
    """
    path = Path(checkpoint)
    info = checkpoint_info(path)
    if info is None:
        raise CheckpointError(f"{path}: not a complete ft checkpoint (missing or unreadable {MARKER})")
    read_metadata(str(path / ".metadata"))  # refuse a crafted file before DCP touches anything
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(
                dict(app_state),
                storage_reader=SafeFileSystemReader(path),
                planner=SafeLoadPlanner(),
                no_dist=not _dist_on(),
            )
    except (Exception, CheckpointException) as e:
        cause = _root_cause(e)
        if isinstance(cause, CheckpointError):
            raise cause from e
        first = f"{type(cause).__name__}: {cause}".splitlines()[0]
        raise CheckpointError(f"{path}: loading failed ({first[:300]})") from e
    rank, _world = _rank_world()
    state = read_rank_state(path, rank)
    if state is None:  # saved on fewer ranks: the caller picks this rank's state (ft_recipes: rank 0's)
        log.info("%s: no rank state for rank %d (saved with world size %s)", path, rank, info["world_size"])
    return state
