"""An ft training recipe with timers around its saves and one profiled step, for ``bench_dist.py``.

``tune run [--nproc-per-node N] bench/_dist_recipe.py --config ...`` runs the recipe named by
``$FT_BENCH_RECIPE`` (``full_finetune_single_device`` or ``lora_finetune_single_device``; the
distributed names run the same files) unchanged: its schema, setup, loop and savers are the recipe's
own objects, imported, not copied. What this module adds only observes them:

* ``$FT_BENCH_OUT`` (a directory): each rank writes ``rank<R>.json`` at the end with one record per save,
  ``{"what": "checkpoint" | "export", "step", "seconds", "rss_before_mib", "peak_mib"}``. ``seconds`` is
  the wall time from a barrier before the save to a barrier after it (the slowest rank's save);
  ``peak_mib`` is the process's ``VmHWM`` after the save, with the high-water mark reset
  (``/proc/self/clear_refs`` = 5) just before it, so it is the save's own peak, not training's.
* ``$FT_BENCH_RESHARD_AFTER_FORWARD=0``: ``ft_dist.shard_model`` is called with
  ``reshard_after_forward=False`` (its ZeRO-2 option, which the recipes do not expose): each layer keeps
  its gathered parameters from its forward to its backward, one all-gather per step instead of two.
* ``$FT_BENCH_PROFILE_STEP`` (an optimizer step, >= 2): that step runs under ``torch.profiler`` (CPU
  activities); each rank adds ``profile`` to its record: the step's wall time, and the self time of the
  profiler's events per name, so that ``bench_dist.py`` can sum the collectives' (``gloo:*``, ``c10d::*``,
  ``FSDP::*`` copy-in/out) and print where the time went.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import Any

_recipe = importlib.import_module(
    f"ft_recipes.{os.environ.get('FT_BENCH_RECIPE', 'full_finetune_single_device')}"
)

Config = _recipe.Config
before_run = _recipe.before_run
PROVIDED = _recipe.PROVIDED
FILE_KEYS = _recipe.FILE_KEYS
DISTRIBUTED = True

__all__ = ["DISTRIBUTED", "FILE_KEYS", "PROVIDED", "Config", "before_run", "main"]

_records: list[dict[str, Any]] = []


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1]) / 1024


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _timed_save(what: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _barrier()
        rss = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak below is the save's
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        _barrier()
        seconds = time.perf_counter() - start
        step = args[1] if what == "checkpoint" else None  # CheckpointSaver.save(self, step, state)
        _records.append(
            {
                "what": what,
                "step": step,
                "seconds": seconds,
                "rss_before_mib": rss,
                "peak_mib": _status_mib("VmHWM"),
            }
        )
        return out

    return wrapper


def _profile_step(at: int) -> None:
    """Profile optimizer step ``at``: from the end of step ``at - 1``'s optimizer update to the end of
    step ``at``'s (torch's global optimizer post-step hook, so the window is one whole step)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    started: list[float] = []
    count = [0]

    def hook(*_: Any) -> None:
        count[0] += 1
        step = count[0]
        if step == at:
            prof.stop()
            wall = time.perf_counter() - started[0]
            events: dict[str, float] = {}
            for e in prof.key_averages():
                events[e.key] = events.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
            rank = int(os.environ.get("RANK", "0"))
            _records.append(
                {"what": "profile", "rank": rank, "step": step, "seconds": wall, "events": events}
            )
        elif step == at - 1:
            torch.distributed.barrier() if torch.distributed.is_initialized() else None
            started.append(time.perf_counter())
            prof.start()

    register_optimizer_step_post_hook(hook)


def main(cfg: Any) -> None:
    """The recipe's own ``main``, with its checkpoint and export savers timed (module docstring).

    Only public objects are wrapped: the loop's checkpoint writer class (``ft_recipes.steps.
    CheckpointSaver.save``), the writers every export ends in (``ft_dist.led_by_rank0`` when sharded,
    ``ft_models.save_pretrained`` in one process) and torch's optimizer post-step hook."""
    import ft_dist
    import ft_models
    from ft_recipes.steps import CheckpointSaver

    CheckpointSaver.save = _timed_save("checkpoint", CheckpointSaver.save)  # type: ignore[method-assign]
    ft_dist.led_by_rank0 = _timed_save("export", ft_dist.led_by_rank0)
    ft_models.save_pretrained = _timed_save("export", ft_models.save_pretrained)
    if os.environ.get("FT_BENCH_RESHARD_AFTER_FORWARD") == "0":
        import functools

        ft_dist.shard_model = functools.partial(ft_dist.shard_model, reshard_after_forward=False)
    at = int(os.environ.get("FT_BENCH_PROFILE_STEP", "0"))
    if at >= 2:
        _profile_step(at)
    try:
        _recipe.main(cfg)
    finally:
        out = os.environ.get("FT_BENCH_OUT")
        if out:
            rank = int(os.environ.get("RANK", "0"))
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"rank{rank}.json").write_text(json.dumps(_records))
