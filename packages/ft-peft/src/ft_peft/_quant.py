"""Frozen base weights in 4-bit NF4/FP4 or 8-bit, stored as plain tensors (QLoRA).

QLoRA (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs") keeps the frozen base
weight in 4-bit NormalFloat with one absmax per block of 64 values, optionally quantising the absmax
values themselves to 8 bits ("double quantisation"). LLM.int8() (Dettmers et al., 2022) keeps int8 rows
with one scale per output row. bitsandbytes provides the kernels; this module only decides how the
result is *stored*: as ordinary tensors, never as bitsandbytes' `Params4bit`, because FSDP2's
`fully_shard` can shard and all-gather a plain tensor but not a tensor subclass carrying a
`quant_state`.

Every stored tensor is non-floating (packed `uint8`, `int8`, or fp32 bits viewed as `int32`), so
neither FSDP2's mixed-precision policy nor `model.to(torch.bfloat16)` ever casts (and so rounds)
quantisation statistics. The 256-entry code book and the scalar offset of double quantisation are
buffers (replicated, tiny); the rest are frozen parameters FSDP2 shards.

Shape legend: d_out output features, d_in input features, n = d_out * d_in, n_blk = ceil(n / blocksize).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ft_peft.errors import MissingExtraError, UnsupportedQuantizationError

__all__ = ["QuantConfig", "dequantize_weight", "empty_quantized", "quantize_weight", "quantized_nbytes"]

QuantKind = Literal["nf4", "fp4", "int8"]

# bitsandbytes' nested (double) quantisation always uses blocks of 256 absmax values.
_NESTED_BLOCKSIZE = 256
# bitsandbytes' int8 row-wise dequantisation multiplies by this fp32 rounding of 1 / 127.
_INV_127 = 7.874015718698502e-3


@dataclass(frozen=True)
class QuantConfig:
    """How a frozen base weight is quantised.

    Attributes:
        kind: "nf4" (QLoRA's NormalFloat, the default), "fp4", or "int8" (row-wise absmax).
        double_quant: Quantise the 4-bit absmax statistics to 8 bits (saves ~0.37 bit per weight).
        blocksize: Values per absmax block for 4-bit kinds (32, 64, 128, 256, ...).
        compute_dtype: Dtype the weight is dequantised to for the matmul (bf16 or fp32).
    """

    kind: QuantKind = "nf4"
    double_quant: bool = False
    blocksize: int = 64
    compute_dtype: torch.dtype = torch.bfloat16

    def check(self, where: str) -> None:
        """Raise `UnsupportedQuantizationError` naming `where` if a field has a value ft-peft cannot run."""
        if self.kind not in ("nf4", "fp4", "int8"):
            raise UnsupportedQuantizationError(
                f"{where}: unknown quantize kind {self.kind!r} (nf4, fp4, int8)"
            )
        if self.compute_dtype not in (torch.bfloat16, torch.float32, torch.float16):
            raise UnsupportedQuantizationError(f"{where}: unsupported compute_dtype {self.compute_dtype}")
        if self.kind != "int8" and (self.blocksize < 32 or self.blocksize & (self.blocksize - 1)):
            raise UnsupportedQuantizationError(
                f"{where}: blocksize {self.blocksize} is not a power of two >= 32"
            )


def as_quant_config(value: str | QuantConfig, where: str) -> QuantConfig:
    """Accept a kind name ("nf4") or a full `QuantConfig`, validated."""
    cfg = QuantConfig(kind=value) if isinstance(value, str) else value  # type: ignore[arg-type]
    if not isinstance(cfg, QuantConfig):
        raise UnsupportedQuantizationError(
            f"{where}: quantize={value!r} is neither a kind name nor a QuantConfig"
        )
    cfg.check(where)
    return cfg


def require_bitsandbytes(where: str) -> Any:
    """Import bitsandbytes lazily; its absence is a one-line error naming the `qlora` extra."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as exc:
        raise MissingExtraError(
            f"{where}: quantized base weights need bitsandbytes; install it with `pip install 'ft-peft[qlora]'`"
        ) from exc


def _as_int32(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().to(torch.float32).view(torch.int32)


# Elements quantised per step: bitsandbytes' 4-bit kernels work on fp32 copies and several fp32-sized
# temporaries of their input, so quantising a large layer whole costs a multiple of its fp32 size.
_QUANT_CHUNK_ELEMENTS = 1 << 22


def _row_chunks(weight: torch.Tensor, multiple: int) -> list[torch.Tensor]:
    """Row slices of ``weight`` of about ``_QUANT_CHUNK_ELEMENTS`` elements each, every one but the last
    holding a multiple of ``multiple`` elements (so no quantisation block straddles two slices)."""
    d_out, d_in = weight.shape
    step = multiple // math.gcd(d_in, multiple)
    rows = max(step, _QUANT_CHUNK_ELEMENTS // max(d_in, 1) // step * step)
    return [weight[i : i + rows] for i in range(0, d_out, rows)]


def quantize_weight(
    weight: torch.Tensor, cfg: QuantConfig, where: str, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Quantise a dense weight with bitsandbytes' kernels, a slice of rows at a time.

    4-bit blocks run along the flattened weight and int8 statistics along rows, so quantising row slices
    whose sizes are whole blocks gives exactly the codes and statistics of quantising the weight whole
    (double quantisation then runs on the complete absmax vector, as bitsandbytes does), while the
    kernels' fp32 temporaries stay the size of one slice.

    Args:
        weight: The `[d_out, d_in]` dense weight (any floating dtype).
        cfg: The quantisation settings.
        where: Module name for error messages.
        dtype: Quantise from this dtype (each slice converted on the way; a loader passes fp32, so the
            codes are those of an fp32 weight whatever the checkpoint stores); ``None`` quantises the
            weight as given.

    Returns:
        Tensors keyed by suffix: "" is the packed weight, the others (e.g. "absmax") its statistics.
    """
    bnb = require_bitsandbytes(where)
    functional = bnb.functional
    w = weight.detach()
    if cfg.kind == "int8":
        # bitsandbytes quantises int8 weights from fp16 (its CUDA kernel takes nothing else); do the same
        # on every device so CPU and CUDA store identical codes.
        parts = [
            functional.int8_vectorwise_quant(c.to(dtype or c.dtype).to(torch.float16))
            for c in _row_chunks(w, 1)
        ]
        codes = torch.cat([codes for codes, _, _ in parts])  # [d_out, d_in] int8
        row_stats = torch.cat([stats for _, stats, _ in parts])  # [d_out]
        return {"": codes, "scale": _as_int32(row_stats)}
    packed_parts, absmax_parts = [], []
    for chunk in _row_chunks(w, cfg.blocksize):
        packed, absmax = torch.ops.bitsandbytes.quantize_4bit.default(
            chunk.to(dtype or chunk.dtype).contiguous(), cfg.blocksize, cfg.kind, torch.uint8
        )
        packed_parts.append(packed.reshape(-1))
        absmax_parts.append(absmax)
    out = {"": torch.cat(packed_parts)}  # [ceil(n / 2)] uint8, two 4-bit codes per byte
    absmax = torch.cat(absmax_parts)  # [n_blk] fp32
    if cfg.double_quant:  # what bitsandbytes.functional.quantize_4bit(compress_statistics=True) does
        offset = absmax.mean()
        nested, state2 = functional.quantize_blockwise(absmax - offset, blocksize=_NESTED_BLOCKSIZE)
        out["absmax"] = nested  # [n_blk] uint8
        out["nested_absmax"] = _as_int32(state2.absmax)  # [ceil(n_blk / 256)]
        out["nested_code"] = _as_int32(state2.code)  # [256]
        out["nested_offset"] = _as_int32(offset.reshape(()))  # []
    else:
        out["absmax"] = _as_int32(absmax)  # [n_blk]
    return out


def empty_quantized(
    shape: tuple[int, int], cfg: QuantConfig, device: torch.device | str | None = None
) -> dict[str, torch.Tensor]:
    """Uninitialised storage with the exact shapes `quantize_weight` returns (meta-device construction)."""
    d_out, d_in = shape
    n = d_out * d_in
    if cfg.kind == "int8":
        return {
            "": torch.empty(d_out, d_in, dtype=torch.int8, device=device),
            "scale": torch.empty(d_out, dtype=torch.int32, device=device),
        }
    n_blk = -(-n // cfg.blocksize)
    out = {"": torch.empty((n + 1) // 2, dtype=torch.uint8, device=device)}
    if cfg.double_quant:
        out["absmax"] = torch.empty(n_blk, dtype=torch.uint8, device=device)
        n_nested = -(-n_blk // _NESTED_BLOCKSIZE)
        out["nested_absmax"] = torch.empty(n_nested, dtype=torch.int32, device=device)
        out["nested_code"] = torch.empty(256, dtype=torch.int32, device=device)
        out["nested_offset"] = torch.empty((), dtype=torch.int32, device=device)
    else:
        out["absmax"] = torch.empty(n_blk, dtype=torch.int32, device=device)
    return out


def is_replicated(suffix: str) -> bool:
    """Whether a stored tensor stays a (replicated) buffer instead of a shardable frozen parameter."""
    return suffix in ("nested_code", "nested_offset")


def dequantize_weight(
    tensors: dict[str, torch.Tensor], shape: tuple[int, int], cfg: QuantConfig, dtype: torch.dtype
) -> torch.Tensor:
    """Rebuild the dense `[d_out, d_in]` weight in `dtype` (bitsandbytes' kernels, traceable ops only).

    Args:
        tensors: The stored tensors, keyed as `quantize_weight` returns them.
        shape: `(d_out, d_in)` of the dense weight.
        cfg: The quantisation settings the tensors were made with.
        dtype: Output dtype (the compute dtype).
    """
    if cfg.kind == "int8":
        scale = tensors["scale"].view(torch.float32)  # [d_out]
        return (tensors[""] * scale.view(-1, 1) * _INV_127).to(dtype)  # [d_out, d_in]
    ops = torch.ops.bitsandbytes
    if cfg.double_quant:
        absmax = ops.dequantize_blockwise(
            tensors["absmax"],
            tensors["nested_absmax"].view(torch.float32),
            tensors["nested_code"].view(torch.float32),
            _NESTED_BLOCKSIZE,
            torch.float32,
        )
        absmax = absmax + tensors["nested_offset"].view(torch.float32)  # [n_blk]
    else:
        absmax = tensors["absmax"].view(torch.float32)  # [n_blk]
    return ops.dequantize_4bit(tensors[""], absmax, cfg.blocksize, cfg.kind, list(shape), dtype)


def quantized_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes held by a quantised weight, statistics included (the figure the memory budget is about)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
