"""LoRA (Hu et al., 2021, arXiv:2106.09685) as a wrapper around an existing `nn.Linear`.

y = W x + b + s * B A dropout(x), with A `[r, d_in]` Kaiming-uniform, B `[d_out, r]` zero (so the
wrapped model's output is unchanged at init) and s = alpha / r, or alpha / sqrt(r) with rsLoRA
(Kalajdzievski, 2023, arXiv:2312.03732). Optional DoRA (see `_dora`) and a quantised frozen base
(QLoRA, see `_quant`).

The wrapper holds the wrapped layer's `weight` and `bias` *as its own attributes* (the very same
`Parameter` objects, frozen, never copied), so the state-dict keys of the layer do not change
(`q_proj.weight`, `q_proj.bias`) and the adapter adds `lora_A.weight`, `lora_B.weight` and, for DoRA,
`lora_magnitude_vector`: exactly the suffixes of PEFT's adapter files. With a quantised base,
`weight` is the packed tensor and its statistics sit beside it (`weight_absmax`, ...).

Shape legend: ... leading (batch, sequence) dims, d_in input features, d_out output features, r rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ft_peft import _dora
from ft_peft._qlinear import dequant_linear
from ft_peft._quant import (
    QuantConfig,
    as_quant_config,
    dequantize_weight,
    empty_quantized,
    is_replicated,
    quantize_weight,
)
from ft_peft.errors import InvalidRankError, MergedStateError

__all__ = ["LoRALinear", "check_rank"]


def _default_adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    # Adapters are trained in fp32 when the base is half precision (fp32 master weights); a mixed
    # precision policy (FSDP2's param_dtype) makes the bf16 compute copies.
    if weight.dtype in (torch.float16, torch.bfloat16) or not weight.dtype.is_floating_point:
        return torch.float32
    return weight.dtype


def _is_power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return mantissa == 0.5


def check_rank(rank: int, d_in: int, d_out: int, name: str) -> None:
    """Raise `InvalidRankError` unless 1 <= rank <= min(d_in, d_out) (a larger rank adds nothing)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
        raise InvalidRankError(
            f"{name}: rank {rank!r} must be an integer in [1, {min(d_in, d_out)}] for a {d_out}x{d_in} layer"
        )


class LoRALinear(nn.Module):
    """A linear layer with a trainable low-rank adapter beside its frozen weight.

    Args:
        base: The `nn.Linear` to wrap; its weight and bias are frozen and shared (or, with `quantize`,
            replaced by their quantised form). May live on the meta device.
        rank: Adapter rank r, 1 <= r <= min(d_in, d_out).
        alpha: Scaling numerator.
        dropout: Dropout probability on the adapter's input.
        use_rslora: Scale by alpha / sqrt(r) instead of alpha / r.
        use_dora: Learn a per-row magnitude (DoRA).
        quantize: None, a kind ("nf4", "fp4", "int8") or a `QuantConfig` for a quantised frozen base.
        adapter_dtype: Dtype of A, B and the magnitude; fp32 by default for half-precision bases.
        name: Module path used in error messages.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
        quantize: str | QuantConfig | None = None,
        adapter_dtype: torch.dtype | None = None,
        name: str = "<linear>",
    ) -> None:
        super().__init__()
        d_out, d_in = base.weight.shape
        check_rank(rank, d_in, d_out, name)
        self.in_features, self.out_features = d_in, d_out
        self.rank, self.alpha, self.use_rslora, self.use_dora = rank, float(alpha), use_rslora, use_dora
        self.dropout_p = float(dropout)
        self.name = name
        self.quant: QuantConfig | None = None if quantize is None else as_quant_config(quantize, name)
        self.adapter_enabled = True
        self.merged = False
        self._merge_factor: torch.Tensor | None = None

        weight = base.weight
        device = weight.device
        dtype = adapter_dtype or _default_adapter_dtype(weight)
        if self.quant is None:
            self.weight = weight  # the same Parameter object: shared, not copied
            self.weight.requires_grad_(False)
        else:
            if weight.is_meta:
                stored = empty_quantized((d_out, d_in), self.quant, device)
            else:
                stored = quantize_weight(weight, self.quant, name)
            self._register_quantized(stored)
        if self.quant is not None or use_dora:
            self.register_load_state_dict_pre_hook(LoRALinear._dense_weight_on_load)
        self.bias = base.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(d_in, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, d_out, bias=False, device=device, dtype=dtype)
        self.lora_magnitude_vector: nn.Parameter | None = None
        if use_dora:
            self.lora_magnitude_vector = nn.Parameter(torch.empty(d_out, device=device, dtype=dtype))
        if not weight.is_meta:
            self.reset_adapter_parameters()

    # ---- construction -------------------------------------------------------------------------

    def _register_quantized(self, stored: dict[str, torch.Tensor]) -> None:
        for suffix, tensor in stored.items():
            key = "weight" if not suffix else f"weight_{suffix}"
            if is_replicated(suffix):
                self.register_buffer(key, tensor)
            else:
                self.register_parameter(key, nn.Parameter(tensor, requires_grad=False))
        self._quant_keys = tuple(stored)

    @staticmethod
    def _dense_weight_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        """A dense checkpoint weight (an HF state dict) arriving at this layer: store it in its final form.

        A quantised layer quantises it (from fp32, so the codes are those of a model loaded in fp32 and
        then quantised, whatever the checkpoint's dtype). A DoRA layer whose magnitude is not yet
        materialised (built on the meta device, streamed by a loader) takes its initial magnitude, the
        row norms of the base weight, from the weight as it arrives, before any storage rounding: the
        value a layer built on a materialised fp32 model gets.
        """
        assert isinstance(module, LoRALinear)
        dense = state_dict.get(prefix + "weight")
        shape = (module.out_features, module.in_features)
        if dense is None or not dense.is_floating_point() or tuple(dense.shape) != shape:
            return
        stored = None
        if module.quant is not None:
            stored = quantize_weight(dense, module.quant, module.name, dtype=torch.float32)
            for suffix, tensor in stored.items():
                state_dict[prefix + ("weight" if not suffix else f"weight_{suffix}")] = tensor
        magnitude = module.lora_magnitude_vector
        key = prefix + "lora_magnitude_vector"
        if magnitude is not None and magnitude.is_meta and key not in state_dict:
            if stored is None:
                base = dense.to(magnitude.dtype)
            else:
                base = dequantize_weight(stored, shape, module.quant, magnitude.dtype)  # type: ignore[arg-type]
            state_dict[key] = module._initial_magnitude(base)

    def _initial_magnitude(self, dense: torch.Tensor) -> torch.Tensor:
        """DoRA's initial magnitude: the row norms of W + s B A with B = 0, i.e. of the base weight."""
        return _dora.weight_norm(dense, torch.zeros_like(dense), self.scaling)

    @torch.no_grad()
    def reset_adapter_parameters(self) -> None:
        """A Kaiming-uniform (as `nn.Linear`), B zero, magnitude = row norms of the base weight."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.lora_magnitude_vector is not None:
            dense = self.dense_weight(self.lora_magnitude_vector.dtype)
            delta = self.lora_B.weight @ self.lora_A.weight  # [d_out, d_in]
            self.lora_magnitude_vector.copy_(_dora.weight_norm(dense, delta.to(dense.dtype), self.scaling))

    @torch.no_grad()
    def init_after_load(self, device: torch.device) -> None:
        """Create the adapter on ``device`` once a loader has filled the base (ft-models' protocol).

        A layer built on the meta device holds its adapter there until its base weight is loaded (the
        DoRA magnitude arrives with the weight, see ``_dense_weight_on_load``). A and B are created in
        the dtypes and with the ``requires_grad`` declared on meta and initialised drawing the random
        generator exactly as constructing the layer on a real device does (``nn.Linear`` draws A, then
        B, then A is drawn again and B zeroed), so with one seed a model streamed into its final form
        gets the very adapter a model loaded whole and then wrapped gets.
        """
        for linear in (self.lora_A, self.lora_B):
            if linear.weight.is_meta:
                like = linear.weight
                linear.weight = nn.Parameter(
                    torch.empty(like.shape, dtype=like.dtype, device=device), requires_grad=like.requires_grad
                )
        self.lora_A.reset_parameters()
        self.lora_B.reset_parameters()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        magnitude = self.lora_magnitude_vector
        if magnitude is not None and magnitude.is_meta:  # the base came without passing the load hook
            value = self._initial_magnitude(self.dense_weight(magnitude.dtype)).to(device)
            self.lora_magnitude_vector = nn.Parameter(value, requires_grad=magnitude.requires_grad)

    # ---- numerics -----------------------------------------------------------------------------

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def _stored(self) -> dict[str, torch.Tensor]:
        """The quantised weight's tensors (packed codes and statistics), keyed as `quantize_weight` made them."""
        return {s: getattr(self, "weight" if not s else f"weight_{s}") for s in self._quant_keys}

    def dense_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The frozen base weight as a dense `[d_out, d_in]` tensor (dequantised for QLoRA)."""
        if self.quant is None:
            return self.weight if dtype is None else self.weight.to(dtype)
        shape = (self.out_features, self.in_features)
        return dequantize_weight(self._stored(), shape, self.quant, dtype or self.quant.compute_dtype)

    def _quantized_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x W^T + b` over the quantised base in `x`'s dtype; W is dequantised again in the backward."""
        assert self.quant is not None
        return dequant_linear(x, bias, self._stored(), (self.out_features, self.in_features), self.quant)

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant is None:
            return F.linear(x, self.weight, self.bias)
        cd = self.quant.compute_dtype
        bias = None if self.bias is None else self.bias.to(cd)
        return self._quantized_linear(x.to(cd), bias).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the adapter's.

        Args:
            x: `[..., d_in]` input.

        Returns:
            `[..., d_out]`, in the dtype the base layer produces.
        """
        result = self._base_forward(x)  # [..., d_out]
        if not self.adapter_enabled or self.merged:
            return result
        out_dtype = result.dtype
        x_a = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        if self.lora_magnitude_vector is None:
            return (result + self._scaled_lora(x_a)).to(out_dtype)
        lora_out = self.lora_B(self.lora_A(x_a))  # [..., r] -> [..., d_out]
        dense = self.dense_weight(x_a.dtype)  # [d_out, d_in]
        # The row norms are a constant for autograd (`weight_norm` detaches): only the `[d_out]` norms
        # are kept, so a quantised base's dense weight is a temporary of this forward, freed below.
        norm = _dora.weight_norm(dense, self.lora_B.weight @ self.lora_A.weight, self.scaling)  # [d_out]
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base_no_bias = result if self.bias is None else result - self.bias
        elif self.quant is not None:
            del dense
            base_no_bias = self._quantized_linear(x_a, None)  # W dropout(x); W dequantised again for backward
        else:
            base_no_bias = F.linear(x_a, dense)  # W dropout(x): the adapter path sees dropped inputs
        delta = _dora.dora_delta(base_no_bias, lora_out, self.lora_magnitude_vector, norm, self.scaling)
        return (result + delta).to(out_dtype)

    def _scaled_lora(self, x_a: torch.Tensor) -> torch.Tensor:
        """``s * B A x`` ``[..., d_out]``; the scale is applied on the rank-r side when that is exact.

        Multiplying by a power of two is exact in floating point, so scaling the ``[..., r]`` product
        instead of the ``[..., d_out]`` output gives bit-identical values (forward and gradients) for a
        fraction of the elementwise work; any other scale is applied to the output, as PEFT does.
        """
        s = self.scaling
        if _is_power_of_two(s):
            return self.lora_B(self.lora_A(x_a) * s)  # [..., r] -> [..., d_out]
        return self.lora_B(self.lora_A(x_a)) * s

    # ---- merging ------------------------------------------------------------------------------

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + s B A (DoRA: rescaled to the learned magnitude), `[d_out, d_in]`, not written anywhere."""
        dense = self.dense_weight(torch.float32)
        delta = (self.lora_B.weight @ self.lora_A.weight).to(torch.float32) * self.scaling
        if self.lora_magnitude_vector is None:
            return dense + delta
        factor = self.lora_magnitude_vector.to(torch.float32) / _dora.weight_norm(dense, delta, 1.0)
        return factor.view(-1, 1) * (dense + delta)  # [d_out, 1] * [d_out, d_in]

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the (dense) base weight in place; `unmerge` undoes it."""
        if self.merged:
            raise MergedStateError(f"{self.name}: adapter is already merged")
        if self.quant is not None:
            raise MergedStateError(
                f"{self.name}: cannot merge into a {self.quant.kind} base in place; use merge_adapters()"
            )
        w = self.weight
        delta = (self.lora_B.weight @ self.lora_A.weight).to(w.dtype) * self.scaling
        if self.lora_magnitude_vector is None:
            w.add_(delta)
        else:
            factor = self.lora_magnitude_vector.to(w.dtype) / _dora.weight_norm(w, delta, 1.0)
            self._merge_factor = factor
            w.copy_(factor.view(-1, 1) * (w + delta))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged adapter again (up to rounding in the weight's dtype)."""
        if not self.merged:
            raise MergedStateError(f"{self.name}: adapter is not merged")
        w = self.weight
        delta = (self.lora_B.weight @ self.lora_A.weight).to(w.dtype) * self.scaling
        if self._merge_factor is None:
            w.sub_(delta)
        else:
            w.copy_(w / self._merge_factor.view(-1, 1) - delta)
            self._merge_factor = None
        self.merged = False

    @torch.no_grad()
    def merged_linear_weight(self) -> torch.Tensor:
        """The weight `to_linear` gives its plain layer: `merged_weight` (or the merged dense weight) in the
        layer's dtype (the base's, or the compute dtype of a quantised base), `[d_out, d_in]`."""
        merged = self.dense_weight(torch.float32) if self.merged else self.merged_weight()
        return merged.to(self.merged_linear_dtype)

    @property
    def merged_linear_dtype(self) -> torch.dtype:
        """The dtype of `to_linear`'s layer: the base weight's, or a quantised base's compute dtype."""
        return self.weight.dtype if self.quant is None else self.quant.compute_dtype

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` carrying the merged weight (dequantised for QLoRA) and the bias."""
        weight = self.merged_linear_weight()
        bias = self.bias is not None
        linear = nn.Linear(
            self.in_features, self.out_features, bias=bias, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # ---- introspection ------------------------------------------------------------------------

    def adapter_parameters(self) -> list[torch.Tensor]:
        """The trainable tensors: A, B and (DoRA) the magnitude."""
        params = [self.lora_A.weight, self.lora_B.weight]
        if self.lora_magnitude_vector is not None:
            params.append(self.lora_magnitude_vector)
        return params

    def extra_repr(self) -> str:
        quant = "" if self.quant is None else f", quantize={self.quant.kind}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha:g}, dropout={self.dropout_p:g}, rslora={self.use_rslora}, dora={self.use_dora}"
            + quant
        )
