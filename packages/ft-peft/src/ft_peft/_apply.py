"""Putting LoRA into any model: module swap by name, trainability, adapter state, merging.

LoRA is a module swap (each matching `nn.Linear` is replaced by a `LoRALinear` holding the very same
weight), never a subclass of the model, so it works on transformers models, torchvision models and a
user's own `nn.Module` alike. Target matching follows PEFT's rules so a `target_modules` list means the
same in ft and PEFT: a list entry matches a module whose full name equals it or ends with "." + entry;
a single string (or a compiled pattern in the list) is a regular expression matched against the full
module name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ft_peft._lora import LoRALinear, check_rank
from ft_peft._quant import QuantConfig, as_quant_config, require_bitsandbytes
from ft_peft.errors import TargetNotFoundError

__all__ = [
    "MergedWeight",
    "adapter_state_dict",
    "apply_lora",
    "disable_adapters",
    "lora_modules",
    "merge_adapters",
    "merged_state_dict",
    "set_trainable",
]

Target = str | re.Pattern[str]
# Wrappers that insert a component into module names (torch.compile, activation checkpointing, FSDP1).
_WRAPPER_PARTS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
ADAPTER_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")


def clean_name(name: str) -> str:
    """Module path without wrapper components, i.e. the path of the unwrapped model."""
    return ".".join(p for p in name.split(".") if p not in _WRAPPER_PARTS)


def _linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Plain linear layers of `model`, not counting the A/B projections inside existing adapters."""
    inside = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(name.startswith(p + ".") for p in inside):
            out[name] = module
    return out


def _entry_matches(entry: Target, name: str) -> bool:
    if isinstance(entry, re.Pattern):
        return entry.fullmatch(name) is not None
    return name == entry or name.endswith("." + entry)


def match_targets(model: nn.Module, target_modules: str | Sequence[Target]) -> list[str]:
    """Names of the linear layers `target_modules` selects, in module order.

    Raises:
        TargetNotFoundError: An entry (or the regex) matches no linear layer.
    """
    linears = _linear_layers(model)
    kind = type(model).__name__
    if isinstance(target_modules, str):
        found = [n for n in linears if re.fullmatch(target_modules, clean_name(n))]
        if not found:
            raise TargetNotFoundError(f"{kind}: target_modules regex {target_modules!r} matches no nn.Linear")
        return found
    if not target_modules:
        raise TargetNotFoundError(f"{kind}: target_modules is empty")
    found_set: set[str] = set()
    for entry in target_modules:
        hits = [n for n in linears if _entry_matches(entry, clean_name(n))]
        if not hits:
            shown = entry.pattern if isinstance(entry, re.Pattern) else entry
            raise TargetNotFoundError(f"{kind}: target module {shown!r} matches no nn.Linear layer")
        found_set.update(hits)
    return [n for n in linears if n in found_set]


def _pattern_value(patterns: Mapping[str, Any] | None, name: str, default: Any) -> Any:
    # PEFT's rank_pattern / alpha_pattern rule: the key, as a regex, must match a suffix of the name.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(
    model: nn.Module,
    target_modules: str | Sequence[Target],
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    use_rslora: bool = False,
    use_dora: bool = False,
    quantize: str | QuantConfig | None = None,
    adapter_dtype: torch.dtype | None = None,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> list[str]:
    """Replace matching linear layers of `model` in place by `LoRALinear` wrappers.

    Nothing is replaced unless every target matches and every layer accepts its rank, so a bad
    argument never leaves a half-converted model.

    Args:
        model: Any module; its own code is not touched.
        target_modules: A list of names/suffixes (`["q_proj", "v_proj"]`) or compiled regexes, or one
            regex string matched against full module names (PEFT's convention).
        rank: Adapter rank r.
        alpha: Scaling numerator (scaling = alpha / r, or alpha / sqrt(r) with `use_rslora`).
        dropout: Dropout on the adapter input.
        use_rslora: Rank-stabilised scaling.
        use_dora: DoRA magnitude vectors.
        quantize: Quantise the frozen base weights: "nf4", "fp4", "int8" or a `QuantConfig` (QLoRA).
        adapter_dtype: Dtype of adapter weights (fp32 by default for half-precision bases).
        rank_pattern: Per-module ranks, keys as in PEFT (a regex matching a suffix of the name).
        alpha_pattern: Per-module alphas, same keys.

    Returns:
        The full names of the replaced layers.
    """
    names = match_targets(model, target_modules)
    linears = _linear_layers(model)
    # Check every argument before touching any layer: a bad one leaves the model as it was.
    ranks = {n: _pattern_value(rank_pattern, clean_name(n), rank) for n in names}
    for name in names:
        d_out, d_in = linears[name].weight.shape
        check_rank(ranks[name], d_in, d_out, clean_name(name))
    if quantize is not None:
        as_quant_config(quantize, clean_name(names[0]))
        require_bitsandbytes(clean_name(names[0]))
    wrapped = {
        name: LoRALinear(
            linears[name],
            rank=ranks[name],
            alpha=_pattern_value(alpha_pattern, clean_name(name), alpha),
            dropout=dropout,
            use_rslora=use_rslora,
            use_dora=use_dora,
            quantize=quantize,
            adapter_dtype=adapter_dtype,
            name=clean_name(name),
        )
        for name in names
    }
    for name, module in wrapped.items():
        _set_submodule(model, name, module)
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """(name, layer) for every `LoRALinear` in `model`, names without wrapper components."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield clean_name(name), module


def set_trainable(model: nn.Module) -> int:
    """Freeze everything except adapter tensors (what `save_adapter` writes, nothing more).

    Returns:
        The number of trainable elements.
    """
    for frozen in model.parameters():
        frozen.requires_grad_(False)
    count = 0
    for _, layer in lora_modules(model):
        for trained in layer.adapter_parameters():
            trained.requires_grad_(True)
            count += trained.numel()
    return count


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors keyed by module path + suffix (`model.layers.0.self_attn.q_proj.lora_A.weight`)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_modules(model):
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight
        if layer.lora_magnitude_vector is not None:
            out[f"{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    return out


def merge_adapters(model: nn.Module) -> list[str]:
    """Replace every `LoRALinear` by a plain `nn.Linear` holding the merged weight.

    The result has no adapter code left (for serving in memory); quantised bases come back
    dequantised in their compute dtype. This holds every merged layer dense at once: to export a
    merged model, stream :func:`merged_state_dict` into a writer instead.

    Returns:
        The names of the replaced layers.
    """
    full_names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in full_names:
        layer = model.get_submodule(name)
        assert isinstance(layer, LoRALinear)
        _set_submodule(model, name, layer.to_linear())
    return [clean_name(n) for n in full_names]


class MergedWeight:
    """One adapted layer's merged weight, described now and computed when called (a deferred tensor).

    Calling it returns what `merge_adapters` would put in the layer's plain `nn.Linear`
    (`LoRALinear.merged_linear_weight`); nothing is kept, so an exporter that calls it when it writes
    the tensor holds one dense merged layer at a time.
    """

    def __init__(self, layer: LoRALinear) -> None:
        self.layer = layer
        self.shape = torch.Size((layer.out_features, layer.in_features))
        self.dtype = layer.merged_linear_dtype

    def __call__(self) -> torch.Tensor:
        return self.layer.merged_linear_weight()


def merged_state_dict(model: nn.Module) -> list[tuple[str, torch.Tensor | MergedWeight]]:
    """The state dict `merge_adapters` would leave, without merging anything yet: for streaming export.

    Keys and order are those of the merged model's state dict (wrapper components removed): each
    adapted layer contributes `weight` (a :class:`MergedWeight`, computed only when called) and its
    `bias` (in the layer's dtype), in place of its base, quantisation and adapter tensors; every other
    tensor is the model's own (no copy). The model is not modified. A writer that calls each deferred
    weight as it writes it (`ft_models.write_pretrained`) exports a merged model holding one merged
    layer at a time.

    Returns:
        ``(key, tensor or MergedWeight)`` pairs in state-dict order.
    """
    layers = dict(lora_modules(model))
    out: list[tuple[str, torch.Tensor | MergedWeight]] = []
    done: set[str] = set()
    for raw, tensor in model.state_dict(keep_vars=True).items():
        key = clean_name(raw)
        owner = next((name for name in _prefixes(key) if name in layers), None)
        if owner is None:
            out.append((key, tensor.detach()))
            continue
        if owner in done:
            continue
        done.add(owner)
        layer = layers[owner]
        out.append((f"{owner}.weight", MergedWeight(layer)))
        if layer.bias is not None:
            out.append((f"{owner}.bias", layer.bias.detach().to(layer.merged_linear_dtype)))
    return out


def _prefixes(key: str) -> Iterator[str]:
    """Module paths that could own ``key``, nearest first (``a.b.c.weight``: ``a.b.c``, ``a.b``, ``a``)."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:end])


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its base model (e.g. a DPO reference model) without a second copy.

    Merged adapters are unmerged for the duration and merged back afterwards.
    """
    layers = [layer for _, layer in lora_modules(model)]
    states = [(layer.adapter_enabled, layer.merged) for layer in layers]
    for layer in layers:
        if layer.merged:
            layer.unmerge()
        layer.adapter_enabled = False
    try:
        yield model
    finally:
        for layer, (enabled, merged) in zip(layers, states):
            layer.adapter_enabled = enabled
            if merged and not layer.merged:
                layer.merge()
