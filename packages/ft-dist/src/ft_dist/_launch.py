"""Process-group setup from torchrun's environment, the global token count, and failing fast.

**Launch.** torchrun (and SLURM scripts that call it) describes a process in environment variables:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` / ``MASTER_PORT``.
:func:`init_distributed` reads them, binds the process to its GPU (``cuda:LOCAL_RANK``) and starts the
default process group with a configurable timeout; without ``WORLD_SIZE`` it is a single process and
starts nothing.

**Global count.** The loss of a window is its summed token losses divided by the trained tokens of the
whole window on *every* data-parallel rank (with FSDP's division off, see ``_shard``). Dividing by a
rank's own count and averaging the ranks (what DDP and FSDP do by default) weights a token on a rank
with few trained tokens more, exactly the per-micro-batch-mean bug of gradient accumulation.

**Failing fast.** When one rank raises, the others are usually inside a collective that waits for it:
they would wait until the process-group timeout. Inside :func:`abort_on_failure` the failing rank
records ``rank R of W failed: <error>`` in the process group's key-value store, then aborts its process
group, which closes its connections: peers waiting on it fail at once, find the record, and raise the
same :class:`~ft_dist.RankFailedError`. So every rank ends with one line naming the rank that failed
first. Records are ranked (:func:`_severity`): a rank's own error before a collective's timeout before
"a peer went away", which only waits a few seconds for its cause to be recorded. A rank killed outright (SIGKILL, OOM) writes nothing; its peers fail on the
closed connection (gloo) or at the timeout (NCCL), and torchrun names the killed rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from ft_dist._mesh import collective_device
from ft_dist.errors import DistributedError, RankFailedError

__all__ = ["Launch", "abort_on_failure", "global_count", "init_distributed"]

_FAILURE_KEY = "ft_dist/failure"
_STORE_TIMEOUT_S = 5.0  # store operations on the failure path: never wait long on a dead peer


@dataclasses.dataclass(frozen=True)
class Launch:
    """Where this process stands in the run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank within the node (the GPU index).
        local_world_size: processes on this node.
        device: the device this process computes on (``cuda:LOCAL_RANK`` or ``cpu``).
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the rank that logs, prints and writes single-copy outputs)."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit():
        raise DistributedError(f"environment: {name}={raw!r} is not a non-negative integer")
    return int(raw)


def _launch_from_env(device_type: str) -> Launch | None:
    world = _env_int("WORLD_SIZE")
    if world is None:
        return None
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    assert rank is not None
    assert local_rank is not None
    assert local_world is not None
    if world < 1 or rank >= world:
        raise DistributedError(f"environment: RANK={rank} is not below WORLD_SIZE={world}")
    if local_world < 1 or local_rank >= local_world:
        raise DistributedError(
            f"environment: LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world}"
        )
    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device(device_type)
    return Launch(rank, world, local_rank, local_world, device)


def init_distributed(
    *, timeout_s: float = 600.0, backend: str | None = None, device_type: str | None = None
) -> Launch:
    """Start the default process group from torchrun's environment (nothing in a single process).

    Args:
        timeout_s: how long a collective waits for the other ranks before failing (also what bounds a
            rank stuck without an error).
        backend: ``gloo``, ``nccl`` or a device map; by default ``cpu:gloo,cuda:nccl`` with CUDA (small
            CPU collectives stay on gloo), else ``gloo``.
        device_type: ``cuda`` or ``cpu``; by default ``cuda`` when available.

    Returns:
        This process's :class:`Launch`. When a process group already exists it is described, not
        replaced.

    Raises:
        DistributedError: a non-positive or non-finite ``timeout_s``, or malformed launch variables.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s):
        raise DistributedError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    if timeout_s <= 0:
        raise DistributedError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    kind = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    launch = _launch_from_env(kind)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = launch.local_rank if launch else rank
        local_world = launch.local_world_size if launch else world
        device = torch.device("cuda", local_rank) if kind == "cuda" else torch.device(kind)
        return Launch(rank, world, local_rank, local_world, device)
    if launch is None:
        device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)
        return Launch(0, 1, 0, 1, device)
    if kind == "cuda":
        torch.cuda.set_device(launch.device)
    dist.init_process_group(
        backend or ("cpu:gloo,cuda:nccl" if kind == "cuda" else "gloo"),
        timeout=timedelta(seconds=timeout_s),
        rank=launch.rank,
        world_size=launch.world_size,
        store=_attempt_store(launch, timeout_s),
    )
    return launch


def _attempt_store(launch: Launch, timeout_s: float) -> dist.Store | None:
    """torchrun's store under a prefix of this attempt, after a restart (None: the default ``env://``).

    Workers that torchrun restarts (``--max-restarts``) meet in the same store as the attempt before
    them; gloo's keys (each rank's address) from the dead attempt are still there, and a new rank may
    read a dead peer's address and fail to connect. A per-attempt prefix keeps the attempts apart.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0":
        return None
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(
        rendezvous("env://", launch.rank, launch.world_size, timeout=timedelta(seconds=timeout_s))
    )
    return dist.PrefixStore(f"ft_attempt_{attempt}/", store)


def global_count(count: int | torch.Tensor, *, group: dist.ProcessGroup | None = None) -> int:
    """``count`` summed over every rank of ``group`` (the default group): one all-reduce, exact in int64.

    Every rank must call it once per accumulation window, with its own window's trained tokens; the
    result is the loss normaliser. Without a process group (or with one rank) it returns ``count``.
    """
    n = int(count)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return n
    total = torch.tensor([n], dtype=torch.int64, device=collective_device(group))
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return int(total.item())


def _store() -> dist.Store | None:
    try:  # the default group's store: torch keeps no public handle on it
        from torch.distributed.distributed_c10d import _get_default_store

        store = _get_default_store()
        store.set_timeout(timedelta(seconds=_STORE_TIMEOUT_S))
        return store
    except Exception:  # no store (a custom backend), or it is gone with its host
        return None


def _key(severity: int) -> str:
    # torchrun keeps its store across restarts (--max-restarts): a record of an earlier attempt must not
    # be read as this attempt's.
    return f"{_FAILURE_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{severity}"


# Errors a rank sees because a peer stopped (its connection closed, its group aborted): consequences.
_PEER_GONE = ("closed by peer", "reset by peer", "connection closed", "broken pipe", "aborted", "remote")


def _severity(error: BaseException) -> int:
    """How primary a failure is: 0 an error of the rank itself (any exception but a communication
    failure), 1 a collective that timed out (a peer did not arrive), 2 a peer that went away.

    A failure makes the ranks it leaves behind fail too, and the order in which they record it is a
    race (gloo closes a pair's connection when one side times out, before that side's Python code
    runs), so records are ranked by this, not by time.
    """
    text = str(error).lower()
    if not isinstance(error, RuntimeError):  # DistError and gloo's errors are RuntimeErrors
        return 0
    if any(sign in text for sign in _PEER_GONE):
        return 2
    if "timed out" in text or "timeout" in text:
        return 1
    return 0


def _recorded(store: dist.Store, below: int) -> str | None:
    for level in range(below):
        if store.check([_key(level)]):
            return store.get(_key(level)).decode()
    return None


def _first_failure(record: str, level: int, *, grace_s: float = _STORE_TIMEOUT_S) -> str:
    """Record ``record`` at ``level`` (the first record of a level wins) and return the most primary
    record: one of a lower level when another rank writes one within ``grace_s`` (a consequence waits
    for its cause; a rank's own error does not wait), else the first of this level."""
    store = _store()
    if store is None:
        return record
    try:
        mine = store.compare_set(_key(level), "", record).decode()
        deadline = time.monotonic() + (grace_s if level else 0.0)
        while True:
            cause = _recorded(store, level)
            if cause is not None:
                return cause
            if time.monotonic() >= deadline:
                return mine
            time.sleep(0.05)
    except Exception:  # the store's host is gone: this rank's own account is all there is
        return record


def _abort() -> None:
    try:
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    except Exception:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return f"{type(error).__name__}: {text[:300]}"


@contextlib.contextmanager
def abort_on_failure() -> Iterator[None]:
    """Run a distributed step so that an exception on any rank ends every rank quickly and clearly.

    An exception inside the block (on this rank, or a collective failing because a peer stopped) is
    recorded, the process group is aborted, and :class:`~ft_dist.RankFailedError` is raised from it,
    naming the rank that failed first, e.g. ``rank 1 of 4 failed: ValueError: ...``. After it the
    process group is gone: end the process (exit non-zero). Without a process group, or with one rank,
    exceptions pass through unchanged.
    """
    try:
        yield
    except RankFailedError:
        raise
    except Exception as error:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            raise
        rank, world = dist.get_rank(), dist.get_world_size()
        record = _first_failure(f"{rank}\t{world}\t{_one_line(error)}", _severity(error))
        _abort()
        failed, total, what = [*record.split("\t", 2), "", ""][:3]
        failed_rank = int(failed) if failed.isdigit() else rank
        message = f"rank {failed_rank} of {total or world} failed: {what}"
        if failed_rank != rank:
            message += f" (seen on rank {rank})"
        raise RankFailedError(message, failed_rank) from error
