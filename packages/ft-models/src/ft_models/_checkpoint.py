"""Loading Hugging Face safetensors checkpoints and GGUF files into ft models.

The model is built on the meta device (no allocation), then every tensor is read on its own: the file
is opened, one tensor is copied out (converted to the target dtype and device in the same copy) and the
file is closed again, so no more than one tensor's worth of file mapping is ever resident. Peak memory
is the weights plus one tensor. Loaded tensors own their memory (they are not views of a file mapping),
so overwriting the checkpoint later cannot corrupt a live model.

Shared embeddings: a tied checkpoint stores ``model.embed_tokens.weight`` only; a stored
``lm_head.weight`` in a tied checkpoint is ignored. Legacy ``rotary_emb.inv_freq`` buffers are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import nn

from ._attention import AttentionKernel
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._registry import build_model
from ._rope import RotaryEmbedding
from .errors import CheckpointError

__all__ = [
    "CheckpointFormat",
    "LoadedCheckpoint",
    "checkpoint_format",
    "from_pretrained",
    "load_pretrained",
    "load_weights",
    "weight_files",
]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


CheckpointFormat = Literal["hf", "gguf"]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_pretrained` read: the model, and the format details that are not the model's.

    Attributes:
        model: The model in eval mode.
        format: ``"hf"`` (a safetensors directory) or ``"gguf"`` (a llama.cpp file, dequantised).
        gguf_metadata: The GGUF file's raw key/values (plain Python values); ``None`` for ``"hf"``.
    """

    model: CausalLM
    format: CheckpointFormat
    gguf_metadata: dict[str, Any] | None = None


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


def from_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kernel: AttentionKernel | None = None,
) -> CausalLM:
    """Load a model from an HF directory (single or sharded safetensors) or a ``.gguf`` file.

    The model only: :func:`load_pretrained` also returns the checkpoint's format and GGUF metadata.
    Arguments and errors as there.

    Returns:
        The model in eval mode.
    """
    return load_pretrained(path, dtype=dtype, device=device, kernel=kernel).model


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kernel: AttentionKernel | None = None,
) -> LoadedCheckpoint:
    """Load a model from an HF directory or a ``.gguf`` file, with the format it came in.

    Format details (a GGUF file's metadata, whether the source is an HF directory) are returned next
    to the model rather than kept on it: the model is the same object whatever it was read from.

    Args:
        path: Directory with ``config.json`` and ``model.safetensors`` or
            ``model.safetensors.index.json`` plus shards; or a ``.gguf`` file.
        dtype: Parameter dtype. Default: the config's ``dtype``/``torch_dtype``, else the dtype the
            tensors are stored in (float32 for GGUF, whose tensors are dequantised).
        device: Where parameters live (CPU by default).
        kernel: Attention kernel (SDPA by default).

    Returns:
        The model (in eval mode), ``"hf"`` or ``"gguf"``, and the GGUF metadata.

    Raises:
        CheckpointError: Missing path or file, unreadable file, missing or unexpected keys, shape
            mismatch.
        ConfigError: Invalid or unsupported ``config.json``.
    """
    path = Path(path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if checkpoint_format(path) == "gguf":
        model, metadata = _from_gguf(path, dtype=dtype, device=device, kernel=kernel)
        return LoadedCheckpoint(model, "gguf", metadata)
    config = DecoderConfig.from_file(path / "config.json")
    files = weight_files(path)
    if dtype is None:
        dtype = _DTYPES[config.dtype] if config.dtype else _stored_dtype(files)
    with torch.device("meta"):
        model = build_model(config, kernel=kernel)
    source = path / INDEX if (path / INDEX).is_file() else path / SINGLE
    load_weights(model, files, dtype=dtype, device=device, source=str(source))
    return LoadedCheckpoint(model.eval(), "hf")


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
        return {single: _keys_of(single)}
    if any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory}: only pickle .bin weights found; ft reads safetensors only")
    raise CheckpointError(f"{directory}: no {SINGLE} or {INDEX}")


def _keys_of(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e


def _stored_dtype(files: dict[Path, list[str]]) -> torch.dtype:
    """The dtype of the first floating tensor stored (checkpoints without a config dtype)."""
    floating = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    for file, keys in files.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                stored = [f.get_slice(key).get_dtype() for key in keys]
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
        for dt in stored:
            if dt in floating:
                return floating[dt]
    return torch.float32


def _iter_file(file: Path, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` reopening the file per tensor, so its mapping never stays resident."""
    for key in keys:
        try:
            with safe_open(str(file), framework="pt") as f:
                yield key, f.get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read tensor {key!r} ({e})") from e


def load_weights(
    model: CausalLM,
    files: dict[Path, list[str]],
    *,
    dtype: torch.dtype,
    device: torch.device,
    source: str,
) -> None:
    """Assign tensors from safetensors ``files`` to a (meta-device) ``model``, one at a time.

    Args:
        model: The model, typically built on the meta device.
        files: Each safetensors file and the tensor names it holds (see :func:`weight_files`).
        dtype: Target dtype of floating tensors.
        device: Target device.
        source: The file named when keys are missing (the index, or the single weights file).

    Raises:
        CheckpointError: Missing or unexpected keys, or a shape mismatch.
    """
    _check_keys(model, {k: str(f) for f, ks in files.items() for k in ks}, source)
    expected = _expected_keys(model)

    def tensors() -> Iterator[tuple[str, torch.Tensor, str]]:
        for file, ks in files.items():
            for key, tensor in _iter_file(file, (k for k in ks if k in expected)):
                yield key, tensor, str(file)

    _assign_all(model, tensors(), dtype=dtype, device=device)


def _expected_keys(model: CausalLM) -> set[str]:
    keys = set(model.state_dict(keep_vars=True))
    if model.config.tie_word_embeddings:
        keys.discard("lm_head.weight")
    return keys


def _ignored(key: str, model: CausalLM) -> bool:
    return key.endswith("rotary_emb.inv_freq") or (
        key == "lm_head.weight" and model.config.tie_word_embeddings
    )


def _check_keys(model: CausalLM, present: dict[str, str], source: str) -> None:
    """Raise on missing keys (naming ``source``) or unexpected ones (naming the file holding them)."""
    expected = _expected_keys(model)
    missing = sorted(expected - present.keys())
    unexpected = sorted(k for k in present.keys() - expected if not _ignored(k, model))
    if missing:
        raise CheckpointError(f"{source}: missing keys {_short(missing)}")
    if unexpected:
        raise CheckpointError(f"{present[unexpected[0]]}: unexpected keys {_short(unexpected)}")


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _assign_all(
    model: CausalLM,
    tensors: Iterable[tuple[str, torch.Tensor, str]],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Replace meta parameters by loaded tensors, then re-tie and compute non-persistent buffers."""
    params = dict(model.named_parameters(remove_duplicate=False))
    for key, tensor, file in tensors:
        param = params[key]
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{file}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}"
            )
        if not tensor.is_floating_point() and param.is_floating_point():
            raise CheckpointError(f"{file}: tensor {key!r} is stored as {tensor.dtype}, not a floating type")
        value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None, copy=True)
        del tensor
        owner, name = _owner(model, key)
        setattr(owner, name, nn.Parameter(value, requires_grad=param.requires_grad))
    model.tie_weights()
    for name, p in model.named_parameters():
        if p.is_meta:  # unreachable after _check_keys unless a builder shares parameters oddly
            raise CheckpointError(f"parameter {name!r} was not loaded")
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_parameters(device)


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    path, _, name = key.rpartition(".")
    return model.get_submodule(path), name


def _from_gguf(
    path: Path, *, dtype: torch.dtype | None, device: torch.device, kernel: AttentionKernel | None
) -> tuple[CausalLM, dict[str, Any]]:
    """Build from a GGUF file: the reader returns an HF-style config, HF-named float32 tensors and the
    file's metadata (returned beside the model)."""
    from ._gguf import read_gguf  # optional dependency `gguf`, imported only here

    ckpt = read_gguf(path)
    config = DecoderConfig.from_hf_dict(ckpt.config, source=str(path))
    with torch.device("meta"):
        model = build_model(config, kernel=kernel)
    tensors: dict[str, torch.Tensor] = ckpt.tensors
    _check_keys(model, dict.fromkeys(tensors, str(path)), str(path))
    for key in [k for k in tensors if _ignored(k, model)]:
        del tensors[key]

    def drain() -> Iterator[tuple[str, torch.Tensor, str]]:
        # Pop as we go so each float32 tensor is freed once converted (keeps peak memory low).
        while tensors:
            key = next(iter(tensors))
            yield key, tensors.pop(key), str(path)

    _assign_all(model, drain(), dtype=dtype or torch.float32, device=device)
    return model.eval(), ckpt.metadata
