"""GGUF checkpoints (llama.cpp's single-file format) read as Hugging Face-named fp32 tensors.

A GGUF file holds key/value metadata (hyper-parameters, the tokenizer, the chat template) and
block-quantised tensors under llama.cpp's names (``blk.{i}.attn_q.weight``). Reading one for ft means:

* map the metadata to a Hub-style ``config.json`` dict and the tensor names to transformers' module
  paths, both from a per-architecture table (a new family is a new table entry, not a branch);
* dequantise each tensor to float32 with the ``gguf`` package (``gguf.quants.dequantize``) when it is
  asked for (:class:`GGUFFile` ``.read``), a few MiB of rows at a time, straight into the tensor that
  is returned, so a loader streaming the file holds one fp32 tensor at a time (plus one small chunk);
* undo llama.cpp's row permutation of ``q_proj``/``k_proj`` (Llama only; Qwen2 / Qwen3 / Gemma 2 files keep the
  rotate-half order): its converter reorders each head's rows so
  the rotary pairs of RoPE (Su et al. 2021, arXiv:2104.09864) are adjacent, ``(x0, x1), (x2, x3), ...``,
  the interleaved layout of its kernels; ft, like transformers, pairs dimension ``j`` with ``j + h_d/2``
  (rotate-half). The permutation moves rows only and quantisation blocks run along rows, so it is undone
  after dequantisation by writing each row to its rotate-half position.

Llama 3.1-style frequency scaling is stored by llama.cpp as a ``rope_freqs.weight`` tensor of
per-frequency divisors rather than as metadata; the four Hub parameters are recovered from it and
checked to reproduce it. Gemma 2's norms compute ``(1 + w) * x``; llama.cpp stores the gain ``1 + w``, so
``w`` is recovered by subtracting 1 (exact in fp32 for gains in ``[0.5, 2]``, Sterbenz).

The per-architecture tables are shared with the writer (``_gguf_write.py``), which inverts them: one
description of each format serves both directions. ``GGUF_ARCHITECTURE_OF`` says which llama.cpp
architecture each ft family is written as (Mistral is llama.cpp's ``llama``).
Shape legend: ``h_d`` head dim, ``n_h`` heads, ``C`` input features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "GGUF_ARCHITECTURE_OF",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "GGUFCheckpoint",
    "GGUFError",
    "GGUFFile",
    "read_gguf",
]

_ROWS_CHUNK_ELEMENTS = 1 << 20  # fp32 elements dequantised per step (4 MiB)
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.([A-Za-z0-9_]+)\.(weight|bias)")


class GGUFError(CheckpointError, ValueError):
    """A GGUF file is unreadable, truncated, of an unsupported architecture or misses metadata."""


@dataclass(frozen=True)
class _Key:
    """One config.json entry read from GGUF metadata (``{arch}`` is replaced by the architecture).

    ``default`` is used when every candidate key is absent; a callable receives the config built so far.
    ``required`` keys with no default are an error when absent.
    """

    hf: str
    gguf: tuple[str, ...]
    cast: Callable[[Any], Any] = int
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class _Architecture:
    """How one ``general.architecture`` maps to a transformers config and state dict.

    Attributes:
        model_type: ``config.json``'s ``model_type``.
        architectures: ``config.json``'s ``architectures``.
        keys: Metadata -> config entries, resolved in order.
        constants: Config entries the format does not store (activation, bias flags).
        tensors: Whole-model GGUF tensor name -> HF name.
        block_tensors: Per-layer GGUF module -> HF module under ``model.layers.{i}.``.
        rotary_rows: Per-layer GGUF module -> config key of its head count, for the modules whose rows
            llama.cpp permuted for interleaved RoPE.
        rope_factors: Name of the per-frequency RoPE divisor tensor, if the format may carry one.
        present_flags: Config flag -> GGUF tensor whose presence sets it (e.g. projection biases).
        unit_offset_norms: Norm gains (HF names ending in ``norm.weight``) are stored as ``1 + w``
            (Gemma's ``(1 + w) * x`` RMSNorm, which llama.cpp computes as a plain ``w * x``).
        derive: Config entries the format implies rather than stores, computed from the config read so
            far (Gemma 2's attention scale, which llama.cpp derives from the shapes).
        refuse: For the writer: why a config cannot be written as this architecture (a setting
            llama.cpp's implementation of it does not have), or ``None``.
    """

    model_type: str
    architectures: tuple[str, ...]
    keys: tuple[_Key, ...]
    constants: Mapping[str, Any]
    tensors: Mapping[str, str]
    block_tensors: Mapping[str, str]
    rotary_rows: Mapping[str, str]
    rope_factors: str | None = None
    present_flags: Mapping[str, str] = field(default_factory=dict)
    unit_offset_norms: bool = False
    derive: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    refuse: Callable[[Mapping[str, Any]], str | None] | None = None


_TOKEN_KEYS = (
    _Key("bos_token_id", ("tokenizer.ggml.bos_token_id",), required=False),
    _Key("eos_token_id", ("tokenizer.ggml.eos_token_id",), required=False),
    _Key("pad_token_id", ("tokenizer.ggml.padding_token_id",), required=False),
)

_LLAMA = _Architecture(
    model_type="llama",
    architectures=("LlamaForCausalLM",),
    keys=(
        _Key("hidden_size", ("{arch}.embedding_length",)),
        _Key("intermediate_size", ("{arch}.feed_forward_length",)),
        _Key("num_hidden_layers", ("{arch}.block_count",)),
        _Key("num_attention_heads", ("{arch}.attention.head_count",)),
        _Key(
            "num_key_value_heads",
            ("{arch}.attention.head_count_kv",),
            default=lambda c: c["num_attention_heads"],
        ),
        _Key(
            "head_dim",
            ("{arch}.attention.key_length", "{arch}.rope.dimension_count"),
            default=lambda c: c["hidden_size"] // c["num_attention_heads"],
        ),
        _Key("rms_norm_eps", ("{arch}.attention.layer_norm_rms_epsilon",), cast=float),
        _Key("rope_theta", ("{arch}.rope.freq_base",), cast=float, default=10000.0),
        _Key("max_position_embeddings", ("{arch}.context_length",)),
        *_TOKEN_KEYS,
    ),
    constants={"hidden_act": "silu"},
    tensors={
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    },
    block_tensors={
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    rotary_rows={"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"},
    rope_factors="rope_freqs.weight",
    present_flags={"attention_bias": "blk.0.attn_q.bias", "mlp_bias": "blk.0.ffn_gate.bias"},
)

# Qwen2 and Qwen3: llama.cpp keeps their q/k rows in the rotate-half order (its NeoX RoPE mode), so no
# rows are un-permuted; Qwen2's q/k/v biases are part of the architecture, Qwen3 adds per-head q/k norms.
_QWEN2 = dataclasses.replace(
    _LLAMA,
    model_type="qwen2",
    architectures=("Qwen2ForCausalLM",),
    constants={"hidden_act": "silu"},
    rotary_rows={},
    rope_factors=None,
    present_flags={},
)
_QWEN3 = dataclasses.replace(
    _QWEN2,
    model_type="qwen3",
    architectures=("Qwen3ForCausalLM",),
    block_tensors={
        **_LLAMA.block_tensors,
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    },
    present_flags={"attention_bias": "blk.0.attn_q.bias"},
)


def _gemma2_attention_scalar(config: Mapping[str, Any]) -> int:
    """The ``query_pre_attn_scalar`` llama.cpp's gemma2 uses: ``hidden / heads`` for the 46-layer 27B
    model, else ``head_dim`` (it stores no key for it)."""
    if config["num_hidden_layers"] == 46:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return int(config["head_dim"])


def _gemma2_refuse(config: Mapping[str, Any]) -> str | None:
    """Gemma 2 settings llama.cpp's ``gemma2`` cannot carry (it ties the head, always slides every other
    layer starting with layer 0, always caps, and derives the attention scale from the shapes)."""
    layers = int(config["num_hidden_layers"])
    standard = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    scalar = config.get("query_pre_attn_scalar")
    if not config.get("tie_word_embeddings", True):
        return "tie_word_embeddings is false; llama.cpp's gemma2 always ties the output projection"
    if config.get("attention_bias"):
        return "attention_bias is true; llama.cpp's gemma2 has no projection biases"
    if scalar is None or float(scalar) != _gemma2_attention_scalar(config):
        return (
            f"query_pre_attn_scalar is {scalar}; llama.cpp's gemma2 uses "
            f"{_gemma2_attention_scalar(config)} for this shape"
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
        if config.get(key) is None:
            return f"{key} is null; llama.cpp's gemma2 always applies it"
    if list(config.get("layer_types") or standard) != standard:
        return "layer_types is not the alternating sliding/global pattern llama.cpp's gemma2 uses"
    return None


_GEMMA2 = _Architecture(
    model_type="gemma2",
    architectures=("Gemma2ForCausalLM",),
    keys=(
        *_LLAMA.keys,
        _Key("sliding_window", ("{arch}.attention.sliding_window",), default=4096),
        _Key("attn_logit_softcapping", ("{arch}.attn_logit_softcapping",), cast=float, default=50.0),
        _Key("final_logit_softcapping", ("{arch}.final_logit_softcapping",), cast=float, default=30.0),
    ),
    constants={"hidden_activation": "gelu_pytorch_tanh"},
    tensors={"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"},
    block_tensors={
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    rotary_rows={},
    unit_offset_norms=True,
    derive=lambda c: {"query_pre_attn_scalar": _gemma2_attention_scalar(c)},
    refuse=_gemma2_refuse,
)

_ARCHITECTURES: dict[str, _Architecture] = {
    "llama": _LLAMA,
    "qwen2": _QWEN2,
    "qwen3": _QWEN3,
    "gemma2": _GEMMA2,
}
SUPPORTED_GGUF_ARCHITECTURES: tuple[str, ...] = tuple(_ARCHITECTURES)
# ft family (config ``model_type``) -> the llama.cpp architecture it is written as. Mistral is llama.cpp's
# ``llama`` (its converter registers MistralForCausalLM there), so a Mistral file reads back as Llama.
GGUF_ARCHITECTURE_OF: dict[str, str] = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
}


@dataclass
class GGUFCheckpoint:
    """A GGUF file as ft consumes it.

    Attributes:
        config: A Hub-style ``config.json`` dict (``rope_theta``/``rope_scaling`` schema).
        tensors: HF-named float32 tensors, ``[out, in]`` for projections; ``lm_head.weight`` only when
            the file has its own output matrix (otherwise ``tie_word_embeddings`` is true).
        metadata: Every GGUF key/value as plain Python values (str, int, float, bool, lists), e.g. the
            tokenizer's ``tokenizer.ggml.tokens`` and ``tokenizer.chat_template``.
    """

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "reading GGUF files needs the gguf package: pip install 'ft-models[gguf]'"
        ) from None
    return gguf


class GGUFFile:
    """An open GGUF file: config and metadata parsed up front, tensors dequantised one at a time.

    The file stays memory-mapped while open; :meth:`read` dequantises one tensor into a new fp32 tensor
    and lets the kernel drop that tensor's mapped pages again, so streaming every tensor through a
    loader holds one fp32 tensor at a time, never a dict of them. Close it (or use it as a context
    manager) to unmap the file.

    Args:
        path: The ``.gguf`` file.

    Raises:
        GGUFError: The file is not a readable GGUF file, is truncated, has an unsupported
            ``general.architecture``, or lacks a required key.
        ImportError: The ``gguf`` package is not installed.
    """

    def __init__(self, path: str | Path) -> None:
        self._gguf = _import_gguf()
        self.path = Path(path)
        try:
            reader = self._gguf.GGUFReader(self.path)
        except Exception as exc:  # the reader raises ValueError, KeyError, IndexError, OSError
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise GGUFError(f"{self.path}: not a readable GGUF file ({first_line})") from None
        if reader.byte_order != "I":
            raise GGUFError(
                f"{self.path}: byte order differs from this machine's; only native-endian GGUF is supported"
            )
        size = reader.data.size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise GGUFError(f"{self.path}: truncated: tensor {t.name} ends past the end of the file")
        self.metadata: dict[str, Any] = {
            name: _field_value(f, self.path)
            for name, f in reader.fields.items()
            if not name.startswith("GGUF.")
        }
        reader.fields.clear()  # ~1.5 numpy views per vocabulary entry: free them before the weights exist
        arch_name = self.metadata.get("general.architecture")
        if arch_name is None:
            raise GGUFError(f"{self.path}: missing metadata key general.architecture")
        arch = _ARCHITECTURES.get(str(arch_name))
        if arch is None:
            supported = ", ".join(SUPPORTED_GGUF_ARCHITECTURES)
            raise GGUFError(
                f"{self.path}: general.architecture {arch_name!r} is not supported (supported: {supported})"
            )
        by_name = {t.name: t for t in reader.tensors}
        self.config: dict[str, Any] = _build_config(arch, str(arch_name), self.metadata, by_name, self.path)
        self._arch = arch
        self._reader: Any = reader
        self._by_hf_name: dict[str, tuple[Any, int | None]] | None = None

    def _index(self) -> dict[str, tuple[Any, int | None]]:
        """HF name -> (reader tensor, heads of a permuted q/k projection), in file order."""
        if self._by_hf_name is None:
            if self._reader is None:
                raise GGUFError(f"{self.path}: file is closed")
            index: dict[str, tuple[Any, int | None]] = {}
            for t in self._reader.tensors:
                if t.name == self._arch.rope_factors:
                    continue
                hf_name, heads_key = _hf_name(self._arch, t.name, self.config, self.path)
                index[hf_name] = (t, self.config[heads_key] if heads_key else None)
            self._by_hf_name = index
        return self._by_hf_name

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> shape in transformers' layout (GGUF dims reversed), in file order; no data is read.

        Raises:
            GGUFError: A tensor name is unknown for the architecture or lies past ``block_count``.
        """
        return {
            name: tuple(int(d) for d in reversed(t.shape.tolist())) for name, (t, _) in self._index().items()
        }

    def read(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantise the tensor with HF name ``name`` into a new tensor (q/k rows un-permuted).

        Args:
            name: The HF name.
            dtype: The returned tensor's dtype; each chunk of rows is dequantised to fp32 and converted on
                the way, so no fp32 copy of the whole tensor exists.

        Raises:
            GGUFError: Unknown name, or a tensor type the ``gguf`` package cannot dequantise.
        """
        entry = self._index().get(name)
        if entry is None:
            raise GGUFError(f"{self.path}: no tensor {name}")
        t, heads = entry
        if self._arch.unit_offset_norms and name.endswith("norm.weight"):
            # llama.cpp stores Gemma's gain as 1 + w: subtract in fp32 (a small vector), then cast.
            out = _dequantize(self._gguf, t, self.path, heads, torch.float32).sub_(1.0).to(dtype)
        else:
            out = _dequantize(self._gguf, t, self.path, heads, dtype)
        _drop_mapped_pages(self._reader.data, t.data_offset, t.n_bytes)
        return out

    def close(self) -> None:
        """Unmap the file (reading afterwards is an error)."""
        self._reader = None
        self._by_hf_name = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_gguf(path: str | Path, *, load_tensors: bool = True) -> GGUFCheckpoint:
    """Read a GGUF file into a transformers-style config, HF-named fp32 tensors and its metadata.

    This builds a dict of every dequantised tensor (fp32): fine for tests and conversions of small
    models; a loader streams through :class:`GGUFFile` instead, one tensor at a time.

    Args:
        path: The ``.gguf`` file (memory-mapped; each tensor is dequantised into its own fp32 buffer in
            chunks of rows).
        load_tensors: ``False`` reads only the config and metadata (fast: no tensor data is touched).

    Returns:
        The :class:`GGUFCheckpoint`.

    Raises:
        GGUFError: The file is not a readable GGUF file, is truncated, has an unsupported
            ``general.architecture`` or tensor type, lacks a required key, or has an unknown tensor.
        ImportError: The ``gguf`` package is not installed.
    """
    with GGUFFile(path) as f:
        tensors = {name: f.read(name) for name in f.shapes()} if load_tensors else {}
        return GGUFCheckpoint(config=f.config, tensors=tensors, metadata=f.metadata)


def _field_value(f: Any, path: Path) -> Any:
    """A GGUF metadata field as plain Python (arrays as lists, strings decoded as UTF-8)."""
    from gguf import GGUFValueType

    def scalar(part: Any, kind: Any) -> Any:
        if kind == GGUFValueType.STRING:
            try:
                return bytes(part).decode("utf-8")
            except UnicodeDecodeError:
                raise GGUFError(f"{path}: metadata key {f.name} holds a string that is not UTF-8") from None
        return part.tolist()[0]

    if not f.types:
        return None
    if f.types[0] == GGUFValueType.ARRAY:
        return [scalar(f.parts[i], f.types[-1]) for i in f.data]
    return scalar(f.parts[f.data[0]], f.types[0])


def _build_config(
    arch: _Architecture, arch_name: str, metadata: Mapping[str, Any], by_name: Mapping[str, Any], path: Path
) -> dict[str, Any]:
    """config.json entries from the metadata table, the tensor list (tying, vocab) and RoPE scaling."""
    embed = next((g for g, h in arch.tensors.items() if h == "model.embed_tokens.weight"), "")
    if embed not in by_name:
        raise GGUFError(f"{path}: missing tensor {embed}")
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "architectures": list(arch.architectures),
        "vocab_size": int(by_name[embed].shape[-1]),  # GGUF lists dims innermost first: [C, vocab]
    }
    for key in arch.keys:
        names = [k.format(arch=arch_name) for k in key.gguf]
        value = next((metadata[n] for n in names if n in metadata), None)
        if value is None:
            if key.default is not None:
                config[key.hf] = key.default(config) if callable(key.default) else key.default
            elif key.required:
                raise GGUFError(f"{path}: missing metadata key {names[0]}")
            continue
        if isinstance(value, list):
            raise GGUFError(
                f"{path}: metadata key {names[0]} is a per-layer list {value[:4]}..., not supported"
            )
        config[key.hf] = key.cast(value)
    config.update(arch.constants)
    config.update({flag: name in by_name for flag, name in arch.present_flags.items()})
    if arch.derive is not None:
        config.update(arch.derive(config))
    config["tie_word_embeddings"] = "lm_head.weight" not in {
        arch.tensors.get(n) for n in by_name if n in arch.tensors
    }
    rotary = metadata.get(f"{arch_name}.rope.dimension_count")
    if rotary is not None and int(rotary) != config["head_dim"]:
        raise GGUFError(
            f"{path}: {arch_name}.rope.dimension_count is {rotary} but head_dim is {config['head_dim']}: "
            "partial rotary embeddings are not supported"
        )
    scaling = _rope_scaling(arch, arch_name, metadata, by_name, config, path)
    if scaling is not None:
        config["rope_scaling"] = scaling
    return config


def _rope_scaling(
    arch: _Architecture,
    arch_name: str,
    metadata: Mapping[str, Any],
    by_name: Mapping[str, Any],
    config: Mapping[str, Any],
    path: Path,
) -> dict[str, Any] | None:
    """The Hub ``rope_scaling`` dict: linear from metadata, llama3 from the ``rope_freqs`` tensor."""
    kind = metadata.get(f"{arch_name}.rope.scaling.type", "none")
    if arch.rope_factors is not None and arch.rope_factors in by_name:
        if kind not in ("none", "linear") or (
            kind == "linear" and float(metadata.get(f"{arch_name}.rope.scaling.factor", 1.0)) != 1.0
        ):
            raise GGUFError(f"{path}: {arch.rope_factors} together with rope.scaling.type {kind!r}")
        import numpy as np

        t = by_name[arch.rope_factors]
        factors = np.asarray(t.data, dtype=np.float64).reshape(-1)
        return _llama3_scaling(factors, config["rope_theta"], config["head_dim"], path)
    if kind == "none":
        legacy = float(metadata.get(f"{arch_name}.rope.scale_linear", 1.0))
        return None if legacy == 1.0 else {"rope_type": "linear", "factor": legacy}
    if kind == "linear":
        key = f"{arch_name}.rope.scaling.factor"
        if key not in metadata:
            raise GGUFError(f"{path}: missing metadata key {key}")
        return {"rope_type": "linear", "factor": float(metadata[key])}
    raise GGUFError(
        f"{path}: {arch_name}.rope.scaling.type {kind!r} is not supported "
        f"(supported: linear, llama3 via {arch.rope_factors})"
    )


def _llama3_rope_factors(
    inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float, original: int
) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's RoPE scaling (what llama.cpp stores as ``rope_freqs``).

    Args:
        inv_freq: Unscaled inverse frequencies ``theta ** (-2i / h_d)``, ``[h_d / 2]``.
        factor: Divisor of the long wavelengths (above ``original / low_freq_factor``).
        low_freq_factor: Sets the long-wavelength edge of the smoothed band.
        high_freq_factor: Wavelengths below ``original / high_freq_factor`` are kept.
        original: Pre-training context length.

    Returns:
        ``[h_d / 2]`` divisors: 1 for short wavelengths, ``factor`` for long ones, a smooth blend between.
    """
    import numpy as np

    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    out = np.where(wavelen > original / low_freq_factor, factor, blended)
    return np.where(wavelen < original / high_freq_factor, 1.0, out)


def _snap(value: float) -> float:
    """Round to two decimals when that changes the value by under 1e-4 relative (undo fp32 noise)."""
    rounded = round(value, 2)
    return rounded if abs(rounded - value) <= 1e-4 * abs(value) else value


def _llama3_scaling(factors: np.ndarray, theta: float, head_dim: int, path: Path) -> dict[str, Any] | None:
    """Recover ``factor``, ``low/high_freq_factor`` and ``original_max_position_embeddings``.

    In the smoothed band ``1/f = (1 - s)/factor + s`` with ``s = (L/wavelen - lo)/(hi - lo)``: ``s`` is
    linear in ``1/wavelen``, so two band frequencies fix its slope and intercept. Scaling ``L``, ``lo``
    and ``hi`` together changes nothing (only ``L/lo`` and ``L/hi`` matter), so ``lo = 1`` is chosen,
    the value every Llama 3.x release uses. The result is verified to reproduce ``factors``.
    """
    import numpy as np

    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [h_d/2]
    if factors.shape != inv_freq.shape:
        raise GGUFError(f"{path}: rope_freqs.weight has {factors.size} entries, expected {inv_freq.size}")
    factor = float(factors.max())
    if factor <= 1.0 + 1e-6:
        return None
    band = (factors > 1.0 + 1e-5) & (factors < factor * (1.0 - 1e-5))
    if int(band.sum()) < 2:
        raise GGUFError(
            f"{path}: rope_freqs.weight has {int(band.sum())} frequencies between 1 and {factor:g}; "
            "Llama 3 scaling parameters cannot be recovered from fewer than 2"
        )
    smooth = (1.0 / factors[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
    slope, intercept = np.polyfit(inv_freq[band] / (2 * math.pi), smooth, 1)
    high = _snap(1.0 - 1.0 / intercept) if intercept < 0 else float("nan")
    original = round(-slope / intercept) if intercept < 0 else 0
    factor = _snap(factor)
    if (
        original <= 0
        or not high > 1.0
        or not np.allclose(
            _llama3_rope_factors(inv_freq, factor, 1.0, high, original), factors, rtol=1e-4, atol=0.0
        )
    ):
        raise GGUFError(f"{path}: rope_freqs.weight does not follow Llama 3 frequency scaling")
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": high,
        "original_max_position_embeddings": int(original),
    }


def _hf_name(arch: _Architecture, name: str, config: Mapping[str, Any], path: Path) -> tuple[str, str | None]:
    """HF name of a GGUF tensor and, for q/k projections, the config key of its head count."""
    if name in arch.tensors:
        return arch.tensors[name], None
    match = _BLOCK_TENSOR.fullmatch(name)
    if match is None or match.group(2) not in arch.block_tensors:
        raise GGUFError(f"{path}: unknown tensor {name} for architecture {arch.model_type}")
    layer, module, kind = int(match.group(1)), match.group(2), match.group(3)
    if layer >= config["num_hidden_layers"]:
        raise GGUFError(f"{path}: tensor {name} is past block_count {config['num_hidden_layers']}")
    return f"model.layers.{layer}.{arch.block_tensors[module]}.{kind}", arch.rotary_rows.get(module)


def _rotary_destination_rows(n_rows: int, n_heads: int) -> np.ndarray:
    """Row in the rotate-half layout of each row of a llama.cpp-permuted q/k projection.

    llama.cpp stores head ``h``'s rows as ``(pair j, half t)`` pairs ``[h, j, t]``; transformers orders
    them ``[h, t, j]`` (all first halves, then all second halves).

    Args:
        n_rows: Output rows of the projection, ``n_h * h_d``.
        n_heads: Heads the rows are grouped in (query heads for q, key/value heads for k).

    Returns:
        ``[n_rows]`` int64: GGUF row ``g`` goes to row ``result[g]``.
    """
    import numpy as np

    half = n_rows // n_heads // 2
    head, within = np.divmod(np.arange(n_rows, dtype=np.int64), 2 * half)
    pair, which_half = np.divmod(within, 2)
    return head * 2 * half + which_half * half + pair


def _drop_mapped_pages(data: Any, offset: int, n_bytes: int) -> None:
    """Let the kernel drop the file pages of a tensor already dequantised (they count in RSS).

    The mapping is read-only and backed by the file, so a page dropped early is simply re-read if it is
    touched again (a tensor sharing the boundary page). A no-op where ``madvise`` is unavailable.
    """
    mm = getattr(data, "base", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset // mmap.PAGESIZE * mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_DONTNEED, start, offset + n_bytes - start)


def _dequantize(
    gguf: Any, t: Any, path: Path, n_heads: int | None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Dequantise one GGUF tensor into a new tensor of ``dtype`` a chunk of rows at a time.

    Args:
        gguf: The imported ``gguf`` module.
        t: The ``gguf.ReaderTensor``; its ``data`` is a memory-mapped ``[rows, bytes or C]`` array.
        path: The file, for messages.
        n_heads: Heads of a q/k projection (weight or bias) whose rows llama.cpp permuted, else ``None``.
        dtype: The output dtype (each fp32 chunk is converted as it is stored).

    Returns:
        The tensor in transformers' shape (GGUF dims reversed), e.g. ``[n_h * h_d, C]``.
    """
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    out = torch.empty(shape, dtype=dtype)
    rows = None
    if n_heads is not None:  # a q/k weight [n_h * h_d, C] or bias [n_h * h_d]: permuted along dim 0
        if shape[0] % (2 * n_heads) != 0 or len(shape) > 2:
            raise GGUFError(
                f"{path}: tensor {t.name} of shape {list(shape)} does not split into {n_heads} heads"
            )
        rows = _rotary_destination_rows(shape[0], n_heads)
    width = shape[-1] if len(shape) > 1 or rows is None else 1  # a permuted bias: one element per row
    dst = out.view(-1, width)  # [rows, C] shares out's memory
    src = t.data.reshape(dst.shape[0], -1)  # [rows, bytes or C]
    step = max(1, _ROWS_CHUNK_ELEMENTS // width)
    for start in range(0, src.shape[0], step):
        try:
            block = gguf.quants.dequantize(src[start : start + step], t.tensor_type)  # [step, C]
        except (NotImplementedError, ValueError) as exc:
            raise GGUFError(
                f"{path}: tensor {t.name} of type {t.tensor_type.name} cannot be dequantised ({exc})"
            ) from None
        values = torch.from_numpy(block).to(dtype)
        if rows is None:
            dst[start : start + step] = values
        else:
            dst[torch.from_numpy(rows[start : start + step])] = values
    return out
