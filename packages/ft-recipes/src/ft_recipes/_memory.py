"""Peak memory of the training loop, measured from the end of setup.

The metrics' ``peak_memory_mib`` describes training, not loading: setup (reading the checkpoint,
quantising, building the optimizer) can peak higher than any step, and a lifetime peak would hide what
a step needs. :func:`reset_peak_memory` is called once when the loop starts, after the setup's own peak
has been read (``setup_peak_memory_mib`` in every record).

- CUDA: the caching allocator's peak of allocated bytes, reset with ``torch.cuda.reset_peak_memory_stats``.
- CPU on Linux: the resident-set high-water mark (``VmHWM`` in ``/proc/self/status``), which writing
  ``5`` to ``/proc/self/clear_refs`` resets to the current resident size (Linux 4.0 and later).
- Elsewhere (macOS, a kernel that refuses the write): the process's lifetime peak RSS
  (``getrusage``), which cannot be reset and so includes setup; compare it with
  ``setup_peak_memory_mib``: equal figures mean the loop stayed below the setup's peak.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

__all__ = ["peak_memory_mib", "reset_peak_memory"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _high_water_mark_kib() -> int | None:
    """``VmHWM`` of this process in KiB, or None where /proc does not report it."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak RSS on a CPU, in MiB, since the last
    :func:`reset_peak_memory` where the platform can reset it (module docstring)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _high_water_mark_kib()
    if hwm is not None:
        return hwm / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak_memory(device: torch.device) -> bool:
    """Start the peak from now; returns whether the platform could (always on CUDA, on Linux for a CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _high_water_mark_kib() is not None
