"""Writing ft models as GGUF files that llama.cpp (and Ollama, LM Studio) run.

The writer inverts the reader's per-architecture tables (``_gguf.py``): the same entries that map a GGUF
file to transformers' config keys and module paths map them back, so a family is described once for
both directions. What it writes follows llama.cpp's own converter (``convert_hf_to_gguf.py``):

* metadata: ``general.*`` (architecture, type, file type, quantisation version), the architecture's
  hyper-parameters under ``{arch}.*`` with llama.cpp's value types (counts ``uint32``, reals
  ``float32``), plus the caller's keys (the tokenizer: ``ft_data.gguf_tokenizer_metadata``);
* tensors under llama.cpp's names; Llama's ``q_proj``/``k_proj`` rows permuted per head from
  transformers' rotate-half order to the interleaved pairs llama.cpp's RoPE kernel expects (the
  converter's ``LlamaModel.permute``); Gemma 2's norm gains stored as ``1 + w``; Llama 3.1 frequency
  scaling as a ``rope_freqs.weight`` tensor;
* storage types: norms and every 1-D tensor in f32 (llama.cpp reads them as f32 only); 2-D weights in the
  requested type, quantised with the ``gguf`` package (``gguf.quants.quantize``) where a row splits
  into whole blocks, else f16 (the converter's fallback). With a 4- or 5-bit type the output projection
  (the embedding when tied) is kept at q8_0, as llama.cpp's quantiser keeps it at higher precision.

The file is written tensor by tensor (one converted tensor alive at a time) into a temporary file beside
the target, fsynced and renamed over it, so a reader never sees a partial file and a failure leaves
nothing behind. A setting the target architecture cannot carry (a sliding window on ``llama``, an untied
Gemma 2 head, ...) is refused before anything is written, naming it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _gguf
from ._atomic import atomic_path
from ._config import DecoderConfig
from ._decoder import CausalLM
from ._gguf import GGUF_ARCHITECTURE_OF, GGUFError

__all__ = ["GGUF_TENSOR_TYPES", "check_gguf_export", "save_gguf"]

GGUF_TENSOR_TYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
_LOW_BIT = ("q5_1", "q5_0", "q4_1", "q4_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


@dataclass(frozen=True)
class _Planned:
    """One tensor of the file: its GGUF name, storage type, logical shape and how to produce it."""

    name: str
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]  # the fp32/fp16/bf16 tensor in transformers' layout, converted


def save_gguf(
    model: CausalLM,
    path: str | os.PathLike[str],
    *,
    tensor_type: str = "f16",
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a GGUF file llama.cpp loads (the counterpart of ``save_pretrained``).

    Args:
        model: A materialised model of a family llama.cpp supports (Llama 3.x / SmolLM2, Mistral, Qwen2,
            Qwen3, Gemma 2); adapters must be merged first (``ft_peft.merge_adapters``).
        path: The ``.gguf`` file to write; its directory must exist.
        tensor_type: Storage type of the 2-D weights, one of :data:`GGUF_TENSOR_TYPES`.
        metadata: Further GGUF keys, plain Python values typed as llama.cpp's converter types them (int:
            uint32, float: float32, bool, str; lists of str, int (int32), float (float32) or bool) —
            typically the tokenizer and chat template from ``ft_data.gguf_tokenizer_metadata``. Keys the
            writer derives from the model (``general.architecture``, ``{arch}.*``, ...) are refused. When
            it holds no ``tokenizer.ggml.*_token_id`` keys, BOS/EOS/pad ids come from the model config.
        overwrite: Replace an existing file at ``path``.

    Returns:
        ``path``.

    Raises:
        CheckpointError: (``GGUFError``) an unknown tensor type, a family or setting llama.cpp cannot
            run, a metadata key or value that cannot be written, a missing directory, an existing file
            without ``overwrite``, or a tensor still on the meta device.
        ImportError: The ``gguf`` package is not installed.
    """
    gguf = _gguf._import_gguf()
    target = Path(path)
    check_gguf_export(model.config, tensor_type)
    _check_target(target, overwrite)
    hf = model.config.to_hf_dict()
    arch_name = GGUF_ARCHITECTURE_OF[model.config.model_type]
    arch = _gguf._ARCHITECTURES[arch_name]
    extra = dict(metadata or {})
    keys = [*_model_keys(gguf, arch, arch_name, hf, tensor_type, extra), *_typed_keys(gguf, extra)]
    keys.append(("general.quantization_version", gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32, None))
    plan = list(_plan(gguf, model, arch, arch_name, tensor_type))
    _write(gguf, target, arch_name, keys, plan)
    return target


def check_gguf_export(config: DecoderConfig, tensor_type: str = "f16") -> None:
    """Refuse, before any weight is read or written, what :func:`save_gguf` cannot write.

    Raises:
        CheckpointError: (``GGUFError``) an unknown tensor type, a family without a llama.cpp
            architecture, or a setting that architecture cannot run; one line naming it.
    """
    if tensor_type not in GGUF_TENSOR_TYPES:
        supported = ", ".join(GGUF_TENSOR_TYPES)
        raise GGUFError(f"tensor type {tensor_type!r} is not supported (supported: {supported})")
    arch_name = GGUF_ARCHITECTURE_OF.get(config.model_type)
    if arch_name is None:
        supported = ", ".join(GGUF_ARCHITECTURE_OF)
        raise GGUFError(
            f"model_type {config.model_type!r} cannot be written as GGUF (supported: {supported})"
        )
    problem = _refusal(_gguf._ARCHITECTURES[arch_name], arch_name, config.to_hf_dict())
    if problem is not None:
        raise GGUFError(f"cannot export {config.model_type} as GGUF {arch_name}: {problem}")


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.parent.is_dir():
        raise GGUFError(f"{target}: directory {target.parent} does not exist")
    if target.is_dir():
        raise GGUFError(f"{target}: is a directory")
    if target.exists() and not overwrite:
        raise GGUFError(f"{target}: already exists; pass overwrite=True (tune export: --force) to replace it")


def _refusal(arch: Any, arch_name: str, hf: Mapping[str, Any]) -> str | None:
    """Why ``hf`` (a Hub-style config dict) cannot be written as ``arch``, or None."""
    keyed = {k.hf for k in arch.keys}
    for key, value in arch.constants.items():
        if hf.get(key, value) != value:
            return f"{key} is {hf[key]!r}; llama.cpp's {arch_name} uses {value!r}"
    if hf.get("mlp_bias") and "mlp_bias" not in arch.present_flags:
        return f"mlp_bias is true; llama.cpp's {arch_name} has no MLP biases"
    window = hf.get("sliding_window")
    uses_window = window is not None and (
        hf.get("use_sliding_window", True) and int(window) < int(hf["max_position_embeddings"])
    )
    if uses_window and "sliding_window" not in keyed:
        return f"sliding_window is {window}; llama.cpp's {arch_name} attends to the whole context"
    scaling = hf.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3" and arch.rope_factors is None:
        return f"rope_scaling type 'llama3' has no GGUF form for llama.cpp's {arch_name}"
    return arch.refuse(hf) if arch.refuse is not None else None


def _model_keys(
    gguf: Any, arch: Any, arch_name: str, hf: Mapping[str, Any], tensor_type: str, extra: Mapping[str, Any]
) -> Iterator[tuple[str, Any, Any, Any]]:
    """``general.*`` and ``{arch}.*`` keys: the reader's key table inverted, plus the converter's extras."""
    vt = gguf.GGUFValueType
    yield "general.type", "model", vt.STRING, None
    yield "general.file_type", _FILE_TYPES[tensor_type], vt.UINT32, None
    tokenizer_ids = any(k.startswith("tokenizer.ggml.") and k.endswith("_token_id") for k in extra)
    for key in arch.keys:
        name = key.gguf[0].format(arch=arch_name)
        if name.startswith("tokenizer.") and tokenizer_ids:
            continue
        value = hf.get(key.hf)
        if isinstance(value, list):  # eos_token_id may list several ids; GGUF holds one
            value = value[0] if value else None
        if value is None:
            continue
        kind = vt.FLOAT32 if key.cast is float else vt.UINT32
        yield name, float(value) if key.cast is float else int(value), kind, None
    yield f"{arch_name}.vocab_size", int(hf["vocab_size"]), vt.UINT32, None
    yield f"{arch_name}.rope.dimension_count", int(hf["head_dim"]), vt.UINT32, None
    yield f"{arch_name}.attention.value_length", int(hf["head_dim"]), vt.UINT32, None
    scaling = hf.get("rope_scaling") or {}
    if scaling.get("rope_type") == "linear":
        yield f"{arch_name}.rope.scaling.type", "linear", vt.STRING, None
        yield f"{arch_name}.rope.scaling.factor", float(scaling["factor"]), vt.FLOAT32, None


def _typed_keys(gguf: Any, extra: Mapping[str, Any]) -> Iterator[tuple[str, Any, Any, Any]]:
    """The caller's keys with the value types llama.cpp's converter gives such values."""
    vt = gguf.GGUFValueType
    reserved = ("general.architecture", "general.type", "general.file_type", "general.quantization_version")
    arches = tuple(f"{a}." for a in _gguf.SUPPORTED_GGUF_ARCHITECTURES)
    for key, value in extra.items():
        if not isinstance(key, str) or not key or key in reserved or key.startswith(arches):
            raise GGUFError(f"metadata key {key!r} is written by save_gguf itself (or is not a key)")
        kind = _value_type(vt, value)
        if kind is None:
            raise GGUFError(f"metadata key {key}: cannot store a {type(value).__name__} value in GGUF")
        if kind == vt.ARRAY:
            if not value:
                continue  # llama.cpp's writer skips empty arrays too
            sub = _array_type(vt, value[0])
            if sub in (None, vt.ARRAY) or any(_array_type(vt, v) != sub for v in value):
                raise GGUFError(
                    f"metadata key {key}: a list must hold str, int, float or bool values of one type"
                )
            yield key, list(value), vt.ARRAY, sub
        else:
            yield key, value, kind, None


def _value_type(vt: Any, value: Any) -> Any:
    if isinstance(value, bool):
        return vt.BOOL
    if isinstance(value, int):
        return vt.UINT32 if 0 <= value < 2**32 else vt.INT64
    if isinstance(value, float):
        return vt.FLOAT32
    if isinstance(value, str):
        return vt.STRING
    if isinstance(value, list | tuple):
        return vt.ARRAY
    return None


def _array_type(vt: Any, value: Any) -> Any:
    return vt.INT32 if isinstance(value, int) and not isinstance(value, bool) else _value_type(vt, value)


def _gguf_name(arch: Any, key: str) -> tuple[str, str | None]:
    """GGUF name of an HF tensor and, for permuted q/k rows, the config key of its head count."""
    for gguf_name, hf_name in arch.tensors.items():
        if hf_name == key:
            return gguf_name, None
    match = _LAYER.fullmatch(key)
    if match is not None:
        module = match.group(2)
        for gguf_module, hf_module in arch.block_tensors.items():
            if hf_module == module:
                name = f"blk.{match.group(1)}.{gguf_module}.{match.group(3)}"
                return name, arch.rotary_rows.get(gguf_module)
    raise GGUFError(f"tensor {key} has no GGUF name in llama.cpp's {arch.model_type} layout")


def _plan(gguf: Any, model: CausalLM, arch: Any, arch_name: str, tensor_type: str) -> Iterator[_Planned]:
    """Every tensor of the file, in the model's order, with its storage type and converter."""
    q = gguf.GGMLQuantizationType
    config = model.config
    hf = config.to_hf_dict()
    wanted = q[tensor_type.upper()]
    tied = config.tie_word_embeddings
    scaling = hf.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3" and arch.rope_factors is not None:
        factors = _rope_factors(config)
        yield _Planned(arch.rope_factors, q.F32, tuple(factors.shape), lambda: factors)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        if tensor.is_meta:
            raise GGUFError(f"cannot export {key!r}: tensor is on the meta device (load or initialise first)")
        name, heads_key = _gguf_name(arch, key)
        rows = None
        if heads_key is not None:
            rows = torch.from_numpy(_gguf._rotary_destination_rows(tensor.shape[0], int(hf[heads_key])))
        offset = arch.unit_offset_norms and key.endswith("norm.weight")
        if tensor.dim() <= 1 or name.endswith("_norm.weight"):
            qtype = q.F32
        elif tensor_type in _LOW_BIT and (name == "output.weight" or (tied and name == "token_embd.weight")):
            qtype = q.Q8_0
        else:
            qtype = wanted
        if qtype not in (q.F32, q.F16, q.BF16):
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if tensor.shape[-1] % block:
                qtype = q.F16  # llama.cpp's converter falls back the same way
        yield _Planned(name, qtype, tuple(tensor.shape), _converter(tensor, rows, offset))


def _converter(tensor: torch.Tensor, rows: torch.Tensor | None, offset: bool) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        t = tensor.detach().to("cpu")
        if rows is not None:  # GGUF row g holds transformers' row rows[g]: [n_h * h_d, C] -> same shape
            t = t.index_select(0, rows)
        if offset:
            t = t.float() + 1.0  # llama.cpp computes Gemma's (1 + w) * x as w' * x
        return t

    return make


def _rope_factors(config: Any) -> torch.Tensor:
    """Llama 3.1's per-frequency divisors, ``[h_d / 2]`` fp32, as llama.cpp's converter computes them."""
    r = config.rope
    inv_freq = r.theta ** (-np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    factors = _gguf._llama3_rope_factors(
        inv_freq, r.factor, r.low_freq_factor, r.high_freq_factor, r.original_max_position_embeddings
    )
    return torch.from_numpy(np.asarray(factors, dtype=np.float32))


def _encode(gguf: Any, t: torch.Tensor, qtype: Any) -> np.ndarray:
    """``t`` in storage type ``qtype`` as a numpy array whose bytes are the GGUF tensor data."""
    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return t.to(torch.float32).contiguous().numpy()
    if qtype == q.F16:
        return t.to(torch.float16).contiguous().numpy()
    if qtype == q.BF16:  # torch rounds to nearest even, as llama.cpp's converter does
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    return np.asarray(gguf.quants.quantize(t.to(torch.float32).contiguous().numpy(), qtype))


def _nbytes(gguf: Any, shape: tuple[int, ...], qtype: Any) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def _write(gguf: Any, target: Path, arch_name: str, keys: list[Any], plan: list[_Planned]) -> None:
    """Header, metadata and tensor infos, then each tensor converted and written in turn; atomically."""
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(tmp, arch_name)
        try:
            for key, value, kind, sub in keys:
                writer.add_key_value(key, value, kind, sub)
            for p in plan:
                writer.add_tensor_info(
                    p.name, p.shape, np.dtype(np.float32), _nbytes(gguf, p.shape, p.qtype), p.qtype
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for p in plan:
                writer.write_tensor_data(_encode(gguf, p.make(), p.qtype))
        finally:
            writer.close()
