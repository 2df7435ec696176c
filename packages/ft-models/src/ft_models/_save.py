"""Writing Hugging Face model directories that transformers and vLLM load as is.

Output: ``config.json`` (Hub-style keys ``rope_theta``/``rope_scaling``, ``architectures``,
``model_type``, ``torch_dtype`` and ``dtype``), ``generation_config.json``, and the weights as
``model.safetensors`` or, past ``max_shard_size``, ``model-0000i-of-0000n.safetensors`` shards plus
``model.safetensors.index.json``. Tied embeddings are written once (``model.embed_tokens.weight``), as
transformers expects. Weights stream: the shard plan needs only shapes and dtypes, and each file is
written one tensor at a time (``_shards``), so saving holds one tensor's CPU copy, and a merged or
converted model (:func:`write_pretrained`) never exists whole.

Atomicity: everything is written in a temporary directory beside the target, which
:func:`~ft_models._atomic.publish_dir` fsyncs and renames over the target; a failure leaves the target
untouched and no partial output. Files get the mode a plain ``open`` gives (the umask's), like every file
ft writes. A
non-empty target is replaced only when it is an earlier ft output holding nothing but the files ft
wrote there (listed in ``.ft-model.json``), or when ``overwrite=True``.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._atomic import publish_dir
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._shards import DeferredTensor, ShardEntry, plan_shards, write_shard
from ._source import INDEX, SINGLE
from .errors import CheckpointError

__all__ = ["parse_size", "save_pretrained", "write_pretrained"]

MARKER = ".ft-model.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"5GB"``, ``"200MiB"``, ``"1000"``.

    Raises:
        CheckpointError: Unparseable size.
    """
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", size.upper())
    if not m:
        raise CheckpointError(f"max_shard_size: cannot parse {size!r} (e.g. '5GB', '500MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def save_pretrained(
    model: CausalLM,
    directory: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes | Path] | None = None,
) -> Path:
    """Save ``model`` as an HF directory (its tensors in their own dtypes).

    The streaming writer :func:`write_pretrained` over the model's state dict: one tensor's CPU copy
    at a time, never a shard's.

    Args:
        model: The model; parameters must be materialised (not meta).
        directory: Target directory (created; its parent must exist).
        max_shard_size: Largest shard in bytes (int) or as ``"5GB"``; a single tensor larger than the
            limit gets a shard of its own.
        overwrite: Replace a non-empty directory that is not an earlier ft output.
        extra_files: Further files written in the same atomic step (tokenizer files, chat template):
            name -> text, bytes, or a path to copy. Names are plain file names; a given
            ``generation_config.json`` replaces the one derived from the config.

    Returns:
        The target directory.

    Raises:
        CheckpointError: The target is a file, is non-empty and not replaceable, a tensor is meta, or
            an extra file name is not a plain name or collides with a file ft writes.
    """
    tensors = _tensors_to_save(model)
    return write_pretrained(
        model.config,
        tensors.items(),
        directory,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        extra_files=extra_files,
    )


def write_pretrained(
    config: DecoderConfig,
    tensors: Iterable[tuple[str, torch.Tensor | DeferredTensor]],
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    extra_files: Mapping[str, str | bytes | Path] | None = None,
) -> Path:
    """Write ``(key, tensor)`` pairs as an HF directory, one tensor at a time, into size-bounded shards.

    The streaming form of :func:`save_pretrained` (which calls it): a merged export, a conversion of
    another format or a gathered sharded model passes its tensors here without ever holding them all.
    Shards are planned in the order given (as ``save_pretrained`` plans a state dict) from shapes and
    dtypes alone; then each file is written, producing each value when its turn comes. A value is a
    tensor (on any device; copied to the CPU a slice at a time) or a :class:`DeferredTensor`, called
    only when written (a merged layer is computed then and freed before the next). The files are
    byte-identical to what ``save_pretrained`` writes for the same tensors. With a tied config a given
    ``lm_head.weight`` is not written (transformers reads the embedding).

    Args:
        config: The model's config (config.json and generation_config.json come from it).
        tensors: State-dict keys and values, in state-dict order.
        directory: Target directory (created; its parent must exist).
        dtype: Write every floating tensor in this dtype (converted a slice at a time); ``None`` keeps
            each tensor's own. config.json's ``dtype`` is the embedding's written dtype.
        max_shard_size, overwrite, extra_files: As :func:`save_pretrained`.

    Returns:
        The target directory.

    Raises:
        CheckpointError: As :func:`save_pretrained`, or a produced tensor differs from its announced
            shape.
    """
    target = Path(directory).absolute()
    limit = parse_size(max_shard_size)
    extras = dict(extra_files or {})
    for name in extras:
        if (
            Path(name).name != name
            or name in ("", ".", "..", MARKER, "config.json", INDEX)
            or (name.endswith(".safetensors"))
        ):
            raise CheckpointError(f"extra_files: {name!r} is not a plain file name ft does not write itself")
    _check_target(target, overwrite)
    entries = [
        ShardEntry(key, value, dtype if dtype is not None and value.dtype.is_floating_point else value.dtype)
        for key, value in tensors
        if not (key == "lm_head.weight" and config.tie_word_embeddings)
    ]
    shards = plan_shards(entries, limit)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        written = _write_weights(tmp, shards)
        embed = next((e.dtype for e in entries if e.key == "model.embed_tokens.weight"), None)
        hf = config.to_hf_dict()
        if embed in _DTYPE_NAMES:
            hf["torch_dtype"] = hf["dtype"] = _DTYPE_NAMES[embed]
        _write_json(tmp / "config.json", hf)
        _write_json(tmp / "generation_config.json", _generation_config(config))
        written += ["config.json", "generation_config.json"]
        for name, content in extras.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            elif isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
            written.append(name)
        _write_json(tmp / MARKER, {"files": sorted(set(written))})
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    if not target.parent.is_dir():
        raise CheckpointError(f"{target.parent}: parent directory does not exist")
    if not target.is_dir() or overwrite:
        return
    present = {p.name for p in target.iterdir()}
    if not present:
        return
    ours: set[str] = set()
    try:
        ours = set(json.loads((target / MARKER).read_text())["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{target}: directory is not empty and is not an ft model directory; pass overwrite=True"
        ) from None
    foreign = sorted(present - ours)
    if foreign:
        raise CheckpointError(
            f"{target}: holds files ft did not write ({', '.join(foreign[:5])}); pass overwrite=True"
        )


def _tensors_to_save(model: CausalLM) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if t.is_meta:
            raise CheckpointError(
                f"cannot save {key!r}: tensor is on the meta device (load or initialise first)"
            )
        tensors[key] = t
    return tensors


def _write_weights(tmp: Path, shards: list[list[ShardEntry]]) -> list[str]:
    """Write shard by shard, tensor by tensor (see ``_shards``); return the file names."""
    names = (
        [SINGLE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    mode = _open_mode(tmp)
    for name, entries in zip(names, shards, strict=True):
        write_shard(tmp / name, entries)
        (tmp / name).chmod(mode)
    if len(shards) == 1:
        return names
    total = sum(e.nbytes for entries in shards for e in entries)
    weight_map = {e.key: name for name, entries in zip(names, shards, strict=True) for e in entries}
    _write_json(tmp / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*names, INDEX]


def _generation_config(c: DecoderConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(c, key) is not None:
            out[key] = getattr(c, key)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _open_mode(directory: Path) -> int:
    """The permission bits a plain ``open()`` gives a new file in ``directory`` (0o666 minus the umask).

    Read from a probe file rather than with ``os.umask``, which can only be read by setting it (racy).
    """
    probe = directory / ".mode-probe"
    probe.touch(mode=0o666)
    try:
        return stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
