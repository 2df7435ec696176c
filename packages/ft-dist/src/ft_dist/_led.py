"""Work that rank 0 drives and every rank takes part in: writing one copy of a sharded model.

A writer on rank 0 decides the order in which it needs tensors (a safetensors file lays its tensors out
by dtype and name, not in state-dict order), and each tensor of a sharded model can only be gathered
by every rank together. :func:`led_by_rank0` lets rank 0's code run as written: each time it asks for
task ``i`` it first tells the other ranks ``i`` (a one-integer broadcast), then every rank runs task
``i`` (a gather, say) together; the other ranks do nothing but serve such requests until rank 0 is
done. So rank 0 holds one task's result at a time and nobody has to know the writer's order in
advance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from ft_dist._mesh import collective_device
from ft_dist.errors import DistributedError

__all__ = ["led_by_rank0"]

T = TypeVar("T")
R = TypeVar("R")

_DONE, _FAILED = -1, -2


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _broadcast_code(code: int) -> int:
    value = torch.tensor([code], dtype=torch.int64, device=collective_device())
    dist.broadcast(value, src=0)
    return int(value.item())


def led_by_rank0(tasks: Sequence[Callable[[], T]], lead: Callable[[Callable[[int], T]], R]) -> R | None:
    """Run ``lead`` on rank 0, where ``lead(run)``'s calls ``run(i)`` run ``tasks[i]`` on every rank.

    Call on every rank with the same ``tasks`` (each one a collective, e.g. gathering a parameter). Rank
    0 calls ``lead(run)``; ``run(i)`` broadcasts ``i``, runs ``tasks[i]()`` and returns its result. The
    other ranks run each task rank 0 asks for, in its order, and discard the results, until ``lead``
    returns. In one process (or without a process group) ``lead`` simply runs.

    Returns:
        ``lead``'s result on rank 0, None on the other ranks.

    Raises:
        DistributedError: On the other ranks when ``lead`` raised on rank 0 (rank 0 re-raises its own
            exception), naming it in one line.
    """
    if not _dist_on():
        return lead(lambda i: tasks[i]())
    if dist.get_rank() != 0:
        while (code := _broadcast_code(0)) >= 0:
            tasks[code]()
        if code == _FAILED:
            message: list[object] = [None]
            dist.broadcast_object_list(message, src=0)
            raise DistributedError(f"rank 0 failed while leading: {message[0]}")
        return None

    def run(i: int) -> T:
        if not 0 <= i < len(tasks):
            raise IndexError(f"led_by_rank0: no task {i} (there are {len(tasks)})")
        _broadcast_code(i)
        return tasks[i]()

    try:
        result = lead(run)
    except Exception as error:
        _broadcast_code(_FAILED)
        text = " ".join(str(error).split())[:300]
        dist.broadcast_object_list([f"{type(error).__name__}: {text}"], src=0)
        raise
    _broadcast_code(_DONE)
    return result
