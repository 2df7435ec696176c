"""torchrun with one line for a failed run: ``python -m ft_recipes._launcher <torchrun args>``.

``tune run --nproc-per-node N`` hands a run to this module rather than to ``torch.distributed.run``
itself. It parses the same arguments and launches through the same elastic agent (restarts,
rendezvous, multi-node), but when a worker fails, torchrun prints a Python traceback and a framed
report of every rank. A rank that met an error ``tune`` reports in one line (bad input, ft_dist's
``RankFailedError`` naming the first failing rank) writes that line to torchrun's per-worker error
file rather than to stderr, so that N ranks meeting one problem do not print it N times: the launcher
prints the first failing rank's line once and exits with that rank's code (a bug's traceback is
printed by the rank itself). A rank killed outright (SIGKILL, the OOM killer) wrote nothing, so the
launcher prints one line naming it and the signal. The agent's own per-process error log lines are
silenced; its warnings (restarts) stay. Rank 0's progress bar shares the launcher's stderr: when the
agent stopped rank 0 (another rank failed), the bar was left mid-line, so the error line starts on a new
one.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = ["describe_failure", "main"]


def describe_failure(rank: int, world_size: int | None, exitcode: int, signal_name: str, host: str) -> str:
    """One line for a worker that died from a signal: which rank, where, and how.

    Args:
        rank: the failed worker's global rank.
        world_size: the job's world size, when known.
        exitcode: the worker's exit code (negative: the signal number).
        signal_name: the signal's name, e.g. ``SIGKILL``.
        host: the node the worker ran on (each node's agent reports its own workers).
    """
    of = f" of {world_size}" if world_size else ""
    how = f"was killed by {signal_name}" if exitcode < 0 else f"exited with code {exitcode}"
    hint = " (out of memory?)" if signal_name == "SIGKILL" else ""
    return f"rank {rank}{of} on {host} {how}{hint}; the other ranks were stopped"


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; the exit code of the run (0, or the first failed rank's)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        zero = exc.failures.get(0)
        # rank 0 ended on its own error path, which closed its bar; else it was stopped (or ran elsewhere)
        start = "" if zero is not None and zero.exitcode > 0 else "\n"
        if failure.exitcode > 0:
            message = failure.error_file_data.get("message") if os.path.isfile(failure.error_file) else None
            if isinstance(message, str):  # the rank's error line (``tune``'s ``_fail``), printed once
                print(f"{start}error: {message}", file=sys.stderr, flush=True)
            return failure.exitcode  # else the rank printed its own traceback
        world = _world_size(args)
        line = describe_failure(rank, world, failure.exitcode, failure.signal_name(), socket.gethostname())
        print(f"{start}error: {line}", file=sys.stderr, flush=True)
        return 1
    return 0


def _world_size(args: object) -> int | None:
    """nnodes x nproc_per_node when both are fixed (``2`` or ``2:2``; not ``1:4`` or ``auto``)."""
    low, _, high = str(getattr(args, "nnodes", "")).partition(":")
    nproc = str(getattr(args, "nproc_per_node", ""))
    if low.isdigit() and (not high or high == low) and nproc.isdigit():
        return int(low) * int(nproc)
    return None


if __name__ == "__main__":
    sys.exit(main())
