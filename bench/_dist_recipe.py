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
        step = args[1] if what == "checkpoint" else None
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


def _profiled_end_step(fn: Any, at: int) -> Any:
    import torch
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    started: list[float] = []

    def wrapper(run: Any, log: Any, step: int, metrics: dict[str, Any]) -> None:
        if step == at:  # the profiled step ends here, before its metrics record and any save
            prof.stop()
            wall = time.perf_counter() - started[0]
            events: dict[str, float] = {}
            for e in prof.key_averages():
                events[e.key] = events.get(e.key, 0.0) + e.self_cpu_time_total / 1e6
            rank = int(os.environ.get("RANK", "0"))
            _records.append(
                {"what": "profile", "rank": rank, "step": step, "seconds": wall, "events": events}
            )
        fn(run, log, step, metrics)
        if step == at - 1:
            torch.distributed.barrier() if torch.distributed.is_initialized() else None
            started.append(time.perf_counter())
            prof.start()

    return wrapper


def main(cfg: Any) -> None:
    """The recipe's own ``main``, with its checkpoint and export savers timed (module docstring)."""
    from ft_recipes import _train

    _train.save_checkpoint = _timed_save("checkpoint", _train.save_checkpoint)
    _train.save_hf_dir = _timed_save("export", _train.save_hf_dir)
    if os.environ.get("FT_BENCH_RESHARD_AFTER_FORWARD") == "0":
        import functools

        import ft_dist

        ft_dist.shard_model = functools.partial(ft_dist.shard_model, reshard_after_forward=False)
    at = int(os.environ.get("FT_BENCH_PROFILE_STEP", "0"))
    if at >= 2:
        _train.end_step = _profiled_end_step(_train.end_step, at)
    try:
        _recipe.main(cfg)
    finally:
        out = os.environ.get("FT_BENCH_OUT")
        if out:
            rank = int(os.environ.get("RANK", "0"))
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"rank{rank}.json").write_text(json.dumps(_records))
