"""Reading ``torch.distributed.checkpoint`` (DCP) directories without unpickling arbitrary objects.

DCP stores its ``.metadata`` file with :mod:`pickle` and its non-tensor values (Python numbers,
strings, lists such as an optimizer's ``param_groups``) with ``torch.load(weights_only=False)``: a
crafted checkpoint could run code on load. This module reads both safely:

- ``.metadata`` goes through :class:`_MetadataUnpickler`, which resolves only DCP's metadata
  dataclasses and the few torch / standard-library types they hold (``torch.Size``, dtypes, layouts,
  ``pathlib`` paths); anything else raises :class:`UnsafeCheckpointError` before any object is built.
- non-tensor values are loaded with ``torch.load(weights_only=True)`` (primitives, containers,
  tensors only).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from ft_dist.errors import CheckpointError, UnsafeCheckpointError

__all__ = ["SafeFileSystemReader", "SafeLoadPlanner", "read_metadata"]

_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[str, set[str]] = {
    _METADATA_MODULE: {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds only DCP metadata objects (and torch dtypes), by name."""

    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"{self._path}: refuses to load {module}.{name} (not DCP metadata)")


def read_metadata(path: str) -> Metadata:
    """Load a DCP ``.metadata`` file through the restricted unpickler.

    Raises:
        UnsafeCheckpointError: the file names a class outside DCP's metadata types.
        CheckpointError: the file is not a pickle of DCP ``Metadata``.
    """
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()  # type: ignore[arg-type]
    except UnsafeCheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing DCP metadata file") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, ImportError) as e:
        raise CheckpointError(f"{path}: not a readable DCP metadata file ({type(e).__name__}: {e})") from e
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: holds {type(metadata).__name__}, not DCP Metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with :func:`read_metadata` in place of its plain ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        metadata = read_metadata(str(self._get_metadata_path(rank)))
        storage_meta = metadata.storage_meta if metadata.storage_meta is not None else StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, loading non-tensor values with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj
