"""Loading Hugging Face safetensors checkpoints and GGUF files into ft models.

:func:`load_pretrained` is a composition of three public pieces: :func:`~ft_models.open_checkpoint`
(config and tensor layout from the headers, tensors read one at a time), the model built on the meta
device from that config (nothing allocated), and :func:`~ft_models.load_weights`, which checks the
checkpoint against the model, lets ``prepare`` transform the empty model, then streams each tensor
into its final form where the :class:`~ft_models.Placement` says. Peak memory is the finished model
plus one tensor, whatever the checkpoint's format; a run that quantises or casts its base never holds
the full-precision model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._attention import AttentionKernel
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._load import Placement, _check_checkpoint, _expected, load_weights
from ._registry import build_model
from ._save import write_pretrained
from ._source import CheckpointFormat, CheckpointSource, checkpoint_format, open_checkpoint

__all__ = [
    "CheckpointFormat",
    "LoadedCheckpoint",
    "checkpoint_format",
    "convert_pretrained",
    "empty_model",
    "from_pretrained",
    "load_pretrained",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


def empty_model(
    config: DecoderConfig, *, dtype: torch.dtype = torch.float32, kernel: AttentionKernel | None = None
) -> CausalLM:
    """The model of ``config`` on the meta device (nothing allocated), its floating parameters ``dtype``.

    What :func:`~ft_models.load_weights` fills: transform it first (adapters, storage dtypes), then
    every tensor is loaded straight into the form declared here.
    """
    with torch.device("meta"):
        model = build_model(config, kernel=kernel)
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    return model


def from_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kernel: AttentionKernel | None = None,
    prepare: Callable[[CausalLM], object] | None = None,
    placement: Placement | None = None,
) -> CausalLM:
    """Load a model from an HF directory (single or sharded safetensors) or a ``.gguf`` file.

    The model only: :func:`load_pretrained` also returns the checkpoint's format and GGUF metadata.
    Arguments and errors as there.

    Returns:
        The model in eval mode.
    """
    return load_pretrained(
        path, dtype=dtype, device=device, kernel=kernel, prepare=prepare, placement=placement
    ).model


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kernel: AttentionKernel | None = None,
    prepare: Callable[[CausalLM], object] | None = None,
    placement: Placement | None = None,
) -> LoadedCheckpoint:
    """Load a model from an HF directory or a ``.gguf`` file, with the format it came in.

    Format details (a GGUF file's metadata, whether the source is an HF directory) are returned next
    to the model rather than kept on it: the model is the same object whatever it was read from.

    Args:
        path: Directory with ``config.json`` and ``model.safetensors`` or
            ``model.safetensors.index.json`` plus shards; or a ``.gguf`` file.
        dtype: Parameter dtype. Default: the config's ``dtype``/``torch_dtype``, else the dtype the
            tensors are stored in (float32 for GGUF, whose tensors are dequantised).
        device: Where parameters live (CPU by default); the same as ``placement=Placement(device)``.
        kernel: Attention kernel (SDPA by default).
        prepare: Called with the empty (meta-device) model before any tensor is read, to transform it:
            apply adapters (a quantised base then quantises each weight as it arrives), set storage
            dtypes. Tensors the checkpoint does not hold are created by their modules after loading
            (see :class:`~ft_models.InitAfterLoad`).
        placement: Where each tensor goes (device, dtype, the part this process keeps); excludes
            ``device``.

    Returns:
        The model (in eval mode), ``"hf"`` or ``"gguf"``, and the GGUF metadata.

    Raises:
        CheckpointError: Missing path or file, unreadable file, missing or unexpected keys, shape
            mismatch.
        ConfigError: Invalid or unsupported ``config.json``.
        ValueError: Both ``device`` and ``placement`` given.
    """
    if placement is not None and device is not None:
        raise ValueError("load_pretrained: pass device or placement, not both")
    placement = placement or Placement(torch.device(device) if device is not None else torch.device("cpu"))
    with open_checkpoint(path) as source:
        if dtype is None:
            config_dtype = source.config.dtype
            dtype = _DTYPES[config_dtype] if config_dtype else source.stored_dtype()
        model = empty_model(source.config, dtype=dtype, kernel=kernel)
        load_weights(model, source, placement=placement, prepare=prepare)
        return LoadedCheckpoint(model.eval(), source.format, source.gguf_metadata)


@dataclass(frozen=True)
class _Stored:
    """A checkpoint tensor read when it is written (a deferred tensor for ``write_pretrained``)."""

    source: CheckpointSource
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    def __call__(self) -> torch.Tensor:
        return self.source.read(self.key)


def convert_pretrained(
    path: str | Path,
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes | Path] | None = None,
) -> Path:
    """Write any checkpoint ft reads (a GGUF file) as an HF directory, one tensor at a time.

    The files are those of ``save_pretrained(from_pretrained(path, dtype=dtype), ...)``, without the
    model ever being loaded: tensors are written in the model's state-dict order, each read (a GGUF
    tensor dequantised) when the writer reaches it.

    Args:
        path: An HF directory or a ``.gguf`` file.
        directory: The HF directory to write.
        dtype: As :func:`load_pretrained` (default: the config's dtype, else the stored one: float32 for
            GGUF).
        max_shard_size, overwrite, extra_files: As :func:`~ft_models.save_pretrained`.

    Raises:
        CheckpointError, ConfigError: As :func:`load_pretrained` and :func:`~ft_models.save_pretrained`.
    """
    with open_checkpoint(path) as source:
        if dtype is None:
            dtype = _DTYPES[source.config.dtype] if source.config.dtype else source.stored_dtype()
        model = empty_model(source.config, dtype=dtype)
        keys = _check_checkpoint(model, source.layout, source.source, _expected(model))
        stored = set(keys)
        tensors = [
            (key, _Stored(source, key, tuple(like.shape), like.dtype))
            for key, like in model.state_dict(keep_vars=True).items()
            if key in stored
        ]
        return write_pretrained(
            source.config,
            tensors,
            directory,
            dtype=dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            extra_files=extra_files,
        )
