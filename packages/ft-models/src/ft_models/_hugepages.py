"""A CPU model's tensors in one block of memory advised for 2 MB pages (Linux transparent huge pages).

Decoding a few rows streams every weight from memory once per token, so its speed is the speed at which
the CPU reads the weights. Read in 4 KB pages, a stream pays a TLB miss every 4 KB and the hardware
prefetchers stop at each page boundary; a model's per-layer weights (a few hundred KB to a few MB each,
below the 2 MB from which torch's allocator could use large pages at all) are therefore read well below
the machine's streaming bandwidth. Placed in one block advised ``MADV_HUGEPAGE``, the same bytes are
read in 2 MB pages, in the order the model uses them (figures: bench/README.md, "Measurements behind
code choices").

:func:`place_in_huge_pages` moves the plain CPU tensors of a module (parameters and buffers) into
such a block, one storage after another in module order. Each tensor keeps its identity, dtype, shape,
strides, ``requires_grad`` and values: only the memory behind ``tensor.data`` changes. Tensors sharing
a storage (tied weights, views) still share one after the move. Tensor subclasses (DTensor shards,
quantised layouts) and tensors on other devices are left where they are. Linux only; elsewhere, and
where transparent huge pages are switched off, nothing moves.

The move costs one copy of the weights plus the kernel's work to find free 2 MB pages (from 0.5 to
several ms a page where memory is fragmented), so it is done where streaming speed pays for it: the
compiled CPU decode step (:class:`~ft_models.DecodeStep`) moves a model's tensors on first use, once.
Views of a moved tensor taken before the move (``w = layer.weight.detach()``) keep the old memory and
no longer alias the model.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import torch
from torch import nn

__all__ = ["HUGE_PAGE", "huge_pages_available", "place_in_huge_pages"]

HUGE_PAGE = 2 << 20
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_ALIGN = 64  # every storage starts on a cache line (and on any element size)


def huge_pages_available() -> bool:
    """Whether this process can ask for 2 MB pages: Linux with transparent huge pages in ``always`` or
    ``madvise`` mode."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = _THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def _movable(t: torch.Tensor) -> bool:
    return type(t.data) is torch.Tensor and t.device.type == "cpu" and t.numel() > 0


def place_in_huge_pages(module: nn.Module, min_bytes: int = HUGE_PAGE) -> int:
    """Move ``module``'s plain CPU parameters and buffers into one block advised for 2 MB pages.

    Args:
        module: The module; its tensors keep their identities (``tensor.data`` is replaced).
        min_bytes: Do nothing when the tensors to move hold fewer bytes than this (a block smaller
            than one large page gains nothing).

    Returns:
        The bytes moved (0 when nothing moved).
    """
    if not huge_pages_available():
        return 0
    with torch.inference_mode(False):  # called under inference mode, the tensors must stay ordinary ones
        return _place(module, min_bytes)


def _place(module: nn.Module, min_bytes: int) -> int:
    """:func:`place_in_huge_pages` itself."""
    # storage -> the tensors on it, and the byte span [lo, hi) they use
    users: dict[int, list[torch.Tensor]] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if _movable(t):
            group = users.setdefault(t.untyped_storage().data_ptr(), [])
            if not any(u is t for u in group):
                group.append(t)
    spans = {
        key: (min(int(t.storage_offset()) * t.element_size() for t in group), max(map(_end_byte, group)))
        for key, group in users.items()
    }
    sizes = {key: -(-(hi - lo) // _ALIGN) * _ALIGN for key, (lo, hi) in spans.items()}
    total = sum(sizes.values())
    if total < min_bytes:
        return 0
    block = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block.madvise(mmap.MADV_HUGEPAGE)
    arena = torch.frombuffer(block, dtype=torch.uint8)  # holds ``block`` for as long as a view lives
    offset = -arena.data_ptr() % HUGE_PAGE  # the first byte on a 2 MB boundary
    for key, group in users.items():
        lo, hi = spans[key]
        old = torch.empty(0, dtype=torch.uint8).set_(group[0].untyped_storage())
        arena[offset : offset + hi - lo].copy_(old[lo:hi])
        del old
        for t in group:
            size = t.element_size()
            start = (offset + int(t.storage_offset()) * size - lo) // size
            moved = torch.empty(0, dtype=t.dtype).set_(arena.untyped_storage(), start, t.shape, t.stride())
            t.data = moved
        offset += sizes[key]
    return total


def _end_byte(t: torch.Tensor) -> int:
    """One past the last byte of its storage that ``t`` reads."""
    last = sum((int(n) - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    return (int(t.storage_offset()) + last + 1) * t.element_size()
