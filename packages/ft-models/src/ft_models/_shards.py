"""safetensors files written one tensor at a time, byte for byte what ``safetensors.torch.save_file`` writes.

``save_file`` needs every tensor of a file in memory at once (it serialises a dict). To write a shard
holding a model's worth of tensors without that, this module writes the format itself
(https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header length, the
JSON header (``__metadata__`` first, then each tensor's ``dtype``, ``shape`` and ``data_offsets``, no
spaces), padded with spaces to a multiple of 8 bytes, then the raw little-endian data. Tensors are laid
out as safetensors lays them out: by descending dtype alignment (the order of its ``Dtype`` enum), then
by name. The header needs only shapes and dtypes, so each value is produced, converted and written
when its turn comes and freed before the next one; a conversion (a bf16 tensor written as fp32) runs a
slice at a time, so it never holds a second copy of a large tensor. A test compares the bytes with
``save_file``'s.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import torch

from .errors import CheckpointError

__all__ = ["DeferredTensor", "ShardEntry", "plan_shards", "write_shard"]

# safetensors' Dtype enum, in its declaration order (the sort key of the data layout).
_DTYPE_ORDER: dict[torch.dtype, tuple[int, str]] = {
    torch.bool: (0, "BOOL"),
    torch.uint8: (1, "U8"),
    torch.int8: (2, "I8"),
    torch.float8_e5m2: (3, "F8_E5M2"),
    torch.float8_e4m3fn: (4, "F8_E4M3"),
    torch.int16: (5, "I16"),
    torch.uint16: (6, "U16"),
    torch.float16: (7, "F16"),
    torch.bfloat16: (8, "BF16"),
    torch.int32: (9, "I32"),
    torch.uint32: (10, "U32"),
    torch.float32: (11, "F32"),
    torch.float64: (12, "F64"),
    torch.int64: (13, "I64"),
    torch.uint64: (14, "U64"),
}
_SLICE_BYTES = 64 << 20  # converted and written per step


@runtime_checkable
class DeferredTensor(Protocol):
    """A tensor described now and produced when it is written (a merged layer's weight).

    ``shape`` and ``dtype`` describe what calling it returns.
    """

    @property
    def shape(self) -> Sequence[int]:
        """The shape of the tensor it produces."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the tensor it produces."""
        ...

    def __call__(self) -> torch.Tensor:
        """Produce the tensor."""
        ...


@dataclass(frozen=True)
class ShardEntry:
    """One tensor of a file to write: its key, the value (or its producer) and the dtype to write it in."""

    key: str
    value: torch.Tensor | DeferredTensor
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def plan_shards(entries: Sequence[ShardEntry], limit: int) -> list[list[ShardEntry]]:
    """Split in order into files of at most ``limit`` bytes (a larger tensor gets a file of its own)."""
    shards: list[list[ShardEntry]] = [[]]
    size = 0
    for entry in entries:
        n = entry.nbytes
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += n
    return shards


def _header(entries: Sequence[ShardEntry]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        end = offset + e.nbytes
        header[e.key] = {
            "dtype": _DTYPE_ORDER[e.dtype][1],
            "shape": list(e.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return raw + b" " * (-len(raw) % 8)


def _write_tensor(f: BinaryIO, value: torch.Tensor, dtype: torch.dtype) -> None:
    """Write ``value`` as ``dtype`` (little-endian, C order), converting and copying a slice at a time."""
    flat = value.detach().reshape(-1)  # a view of a contiguous tensor
    step = max(1, _SLICE_BYTES // max(value.element_size(), dtype.itemsize))
    for start in range(0, flat.numel(), step):
        piece = flat[start : start + step].to("cpu", dtype=dtype).contiguous()
        f.write(piece.view(torch.uint8).numpy().data)  # the tensor's own bytes, no copy
        del piece


def write_shard(path: Path, entries: Sequence[ShardEntry]) -> None:
    """Write one safetensors file of ``entries``, producing each value only when it is written.

    Raises:
        CheckpointError: A dtype safetensors cannot store, or a produced tensor whose shape differs from
            the one announced.
    """
    for e in entries:
        if e.dtype not in _DTYPE_ORDER:
            raise CheckpointError(f"cannot save {e.key!r}: dtype {e.dtype} has no safetensors name")
    ordered = sorted(entries, key=lambda e: (-_DTYPE_ORDER[e.dtype][0], e.key.encode()))
    header = _header(ordered)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for e in ordered:
            value = e.value if isinstance(e.value, torch.Tensor) else e.value()
            if value.is_meta:
                raise CheckpointError(
                    f"cannot save {e.key!r}: tensor is on the meta device (load or initialise first)"
                )
            if tuple(value.shape) != e.shape:
                raise CheckpointError(
                    f"cannot save {e.key!r}: produced shape {tuple(value.shape)}, announced {e.shape}"
                )
            _write_tensor(f, value, e.dtype)
            del value
