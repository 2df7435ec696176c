"""Checkpoints opened for streaming: every tensor's layout known up front, the values read one at a time.

A :class:`CheckpointSource` is what the loader and the converters read from, whatever the format:

* an HF directory (``model.safetensors``, or ``model.safetensors.index.json`` plus shards): the layout
  comes from the safetensors headers (each file is opened and validated by ``safetensors`` itself, no
  data is touched), and each tensor is read with plain file reads straight into a new tensor of its
  own: no file mapping is ever resident (a mapped tensor's pages count in the process's memory until
  it is unmapped, which would double every tensor while it is copied out);
* a GGUF file: the layout from its tensor table, and each tensor dequantised to fp32 only when it is
  read (:class:`~ft_models._gguf.GGUFFile`), never a dict of all of them.

Tensors come back on the CPU in the dtype they are stored in (fp32 for GGUF), owning their memory (not
views of a file mapping), so overwriting the checkpoint later cannot corrupt a live model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from ._config import DecoderConfig
from .errors import CheckpointError

__all__ = [
    "INDEX",
    "SINGLE",
    "CheckpointFormat",
    "CheckpointSource",
    "TensorInfo",
    "checkpoint_format",
    "open_checkpoint",
    "weight_files",
]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"

CheckpointFormat = Literal["hf", "gguf"]

# safetensors' dtype names -> torch dtypes (the ones torch has).
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, as its file's header describes it.

    Attributes:
        shape: The stored shape (transformers' layout; GGUF's dims already reversed).
        dtype: The stored dtype (fp32 for GGUF: what its tensors are dequantised to).
        file: The file holding it (named in error messages).
        offset: Where its bytes start in ``file`` (safetensors; ``-1`` for GGUF).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str
    offset: int = -1


def checkpoint_format(path: str | Path) -> CheckpointFormat:
    """What ``path`` holds, without reading weights: ``"hf"`` or ``"gguf"``.

    A caller that needs an HF directory (PEFT, transformers, vLLM) asks this before deciding to write
    the model out as one.

    Raises:
        CheckpointError: The path is missing, a file that is not ``.gguf``, or a directory without
            ``config.json``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise CheckpointError(f"{path}: expected a model directory or a .gguf file")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path / 'config.json'}: file not found")
    return "hf"


def weight_files(directory: Path) -> dict[Path, list[str]]:
    """Map each safetensors file of an HF directory to the tensor names it holds.

    Raises:
        CheckpointError: No weights, a malformed index, or a shard the index names is missing.
    """
    index_path, single = directory / INDEX, directory / SINGLE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_bytes())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a safetensors index ({e!r})") from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: key 'weight_map' must be an object of tensor -> file")
        files: dict[Path, list[str]] = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise CheckpointError(f"{index_path}: key 'weight_map.{key}' = {name!r} is not a file name")
            files.setdefault(directory / name, []).append(key)
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard named in {index_path.name} not found")
        return files
    if single.is_file():
        with _open(single) as f:
            return {single: list(f.keys())}
    if any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory}: only pickle .bin weights found; ft reads safetensors only")
    raise CheckpointError(f"{directory}: no {SINGLE} or {INDEX}")


def _open(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e


def _data_offsets(file: Path) -> tuple[int, dict[str, int]]:
    """Where the data section starts and each tensor's start within it, from the safetensors header."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return 8 + n, {k: int(v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"}


def _hf_layout(files: Mapping[Path, list[str]]) -> dict[str, TensorInfo]:
    """Every tensor's stored shape, dtype and offset from the safetensors headers, in file order."""
    layout: dict[str, TensorInfo] = {}
    for file, keys in files.items():
        with _open(file) as f:  # safetensors validates the header against the file first
            present = set(f.keys())
            start, offsets = _data_offsets(file)
            for key in keys:
                if key not in present:
                    raise CheckpointError(f"{file}: holds no tensor {key!r} (named in its index)")
                piece = f.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise CheckpointError(f"{file}: tensor {key!r} has unsupported dtype {piece.get_dtype()}")
                shape = tuple(int(d) for d in piece.get_shape())
                layout[key] = TensorInfo(shape, dtype, str(file), start + offsets[key])
    return layout


_READ_SLICE_BYTES = 16 << 20  # read and converted per step when the dtype changes


def _read_exactly(f: Any, into: torch.Tensor, info: TensorInfo, key: str) -> None:
    """Fill the contiguous ``into`` with the file's next bytes."""
    view = into.view(torch.uint8).numpy()
    if f.readinto(view.data) != view.size:
        raise CheckpointError(f"{info.file}: cannot read tensor {key!r} (file ends inside it)")


class CheckpointSource:
    """A checkpoint opened for streaming (use :func:`open_checkpoint`).

    Attributes:
        path: The directory or ``.gguf`` file.
        format: ``"hf"`` or ``"gguf"``.
        config: The model's configuration (config.json, or GGUF metadata mapped to it).
        gguf_metadata: The GGUF file's raw key/values (plain Python values); ``None`` for ``"hf"``.
        layout: Stored name -> :class:`TensorInfo`, in the order the files hold them.
        source: The file named when tensors are missing (the index, the single weights file, the GGUF).
    """

    def __init__(
        self,
        path: Path,
        format: CheckpointFormat,
        config: DecoderConfig,
        layout: dict[str, TensorInfo],
        source: str,
        gguf: Any = None,
    ) -> None:
        self.path, self.format, self.config = path, format, config
        self.layout, self.source = layout, source
        self._gguf = gguf
        self.gguf_metadata: dict[str, Any] | None = None if gguf is None else gguf.metadata

    def stored_dtype(self) -> torch.dtype:
        """The dtype of the first floating tensor stored (float32 for GGUF or when none is floating)."""
        return next((i.dtype for i in self.layout.values() if i.dtype.is_floating_point), torch.float32)

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor on the CPU, owning its memory, in its stored dtype (GGUF: fp32) or in ``dtype``.

        A conversion runs a slice at a time (safetensors: bytes read into a small buffer and converted
        into the output; GGUF: dequantised a chunk of rows at a time), so reading never holds the tensor
        twice.

        Raises:
            CheckpointError: Unknown key, or the file cannot be read.
        """
        info = self.layout.get(key)
        if info is None:
            raise CheckpointError(f"{self.source}: no tensor {key!r}")
        if self._gguf is not None:
            return self._gguf.read(key, dtype or torch.float32)  # type: ignore[no-any-return]
        out = torch.empty(info.shape, dtype=dtype or info.dtype)
        flat = out.reshape(-1)
        try:
            with open(info.file, "rb") as f:
                f.seek(info.offset)
                if out.dtype == info.dtype:
                    _read_exactly(f, flat, info, key)
                else:
                    step = max(1, _READ_SLICE_BYTES // info.dtype.itemsize)
                    buffer = torch.empty(min(step, flat.numel()), dtype=info.dtype)
                    for start in range(0, flat.numel(), step):
                        piece = buffer[: min(step, flat.numel() - start)]
                        _read_exactly(f, piece, info, key)
                        flat[start : start + piece.numel()].copy_(piece)
        except OSError as e:
            raise CheckpointError(f"{info.file}: cannot read tensor {key!r} ({e.strerror or e})") from e
        return out

    def tensors(
        self, keys: Iterable[str] | None = None, dtype: torch.dtype | None = None
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(key, tensor)`` one at a time (see :meth:`read`), in layout order or in the order of ``keys``."""
        for key in self.layout if keys is None else keys:
            yield key, self.read(key, dtype)

    def close(self) -> None:
        """Release the file (a GGUF mapping); an HF source holds nothing open between reads."""
        if self._gguf is not None:
            self._gguf.close()

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(path: str | Path) -> CheckpointSource:
    """Open an HF directory or a ``.gguf`` file for streaming: config and layout now, tensors on demand.

    Raises:
        CheckpointError: Missing path or file, unreadable file or header, malformed index.
        ConfigError: Invalid or unsupported ``config.json`` (or GGUF metadata).
    """
    path = Path(path)
    if checkpoint_format(path) == "gguf":
        from ._gguf import GGUFFile  # optional dependency `gguf`, imported only here

        gguf = GGUFFile(path)
        try:
            config = DecoderConfig.from_hf_dict(gguf.config, source=str(path))
            layout = {
                name: TensorInfo(shape, torch.float32, str(path)) for name, shape in gguf.shapes().items()
            }
        except BaseException:
            gguf.close()
            raise
        return CheckpointSource(path, "gguf", config, layout, str(path), gguf)
    config = DecoderConfig.from_file(path / "config.json")
    files = weight_files(path)
    source = path / INDEX if (path / INDEX).is_file() else path / SINGLE
    return CheckpointSource(path, "hf", config, _hf_layout(files), str(source))
