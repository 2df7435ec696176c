"""Adapters on disk in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

File keys are `base_model.model.<module path>.lora_A.weight` (and `lora_B.weight`,
`lora_magnitude_vector`), the path being the module's path in the unwrapped model. Because ft models
use transformers' module paths, one adapter file serves ft, PEFT (`PeftModel.from_pretrained`) and
vLLM alike. Files are written atomically (:func:`~ft_peft._atomic.write_atomic`: temporary file, fsync,
rename, with the mode a plain ``open`` gives); the config is written last, so a directory with a config
always has its weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ft_peft._apply import _linear_layers, _pattern_value, apply_lora, clean_name, lora_modules, match_targets
from ft_peft._atomic import write_atomic
from ft_peft._lora import LoRALinear
from ft_peft._quant import QuantConfig
from ft_peft.errors import AdapterFormatError, AdapterShapeError, TargetNotFoundError

__all__ = ["load_adapter", "save_adapter"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _full_cpu(t: torch.Tensor) -> torch.Tensor:
    # A tensor sharded by FSDP2 is a DTensor: gather it (duck-typed, no torch.distributed import).
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return full.detach().to("cpu").contiguous()


def _target_modules(model: nn.Module, names: list[str]) -> list[str] | str:
    """PEFT's `target_modules` for exactly these layers: leaf names when they select no more, else a regex."""
    leaves = sorted({n.rpartition(".")[2] for n in names})
    candidates = {clean_name(n) for n in _linear_layers(model)} | set(names)
    if {c for c in candidates if c.rpartition(".")[2] in leaves} == set(names):
        return leaves
    return "^(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")$"


def _one(values: list[Any], field: str, model: nn.Module) -> Any:
    if len(set(values)) > 1:
        raise AdapterFormatError(
            f"{type(model).__name__}: adapters differ in {field} ({sorted(set(values))})"
        )
    return values[0]


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    base_model_name_or_path: str | None = None,
    task_type: str | None = "CAUSAL_LM",
) -> Path:
    """Write the model's adapters in PEFT's format.

    Args:
        model: A model with `LoRALinear` layers (possibly sharded by FSDP2; shards are gathered).
        directory: Output directory (created if missing; other files in it are left alone).
        base_model_name_or_path: Hub id or path of the base model, recorded for PEFT.
        task_type: PEFT task type (`"CAUSAL_LM"`; None for a model PEFT should wrap generically).

    Returns:
        The directory.
    """
    layers = dict(lora_modules(model))
    if not layers:
        raise AdapterFormatError(f"{type(model).__name__}: no LoRA layers to save")
    ranks = Counter(layer.rank for layer in layers.values())
    alphas = Counter(layer.alpha for layer in layers.values())
    r, alpha = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
    all_layers = list(layers.values())
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "target_modules": _target_modules(model, list(layers)),
        "lora_dropout": _one([m.dropout_p for m in all_layers], "dropout", model),
        "use_dora": _one([m.use_dora for m in all_layers], "use_dora", model),
        "use_rslora": _one([m.use_rslora for m in all_layers], "use_rslora", model),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {re.escape(n): m.rank for n, m in layers.items() if m.rank != r},
        "alpha_pattern": {re.escape(n): m.alpha for n, m in layers.items() if m.alpha != alpha},
    }
    from safetensors.torch import save

    tensors = {}
    for name, layer in layers.items():
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = _full_cpu(layer.lora_A.weight)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = _full_cpu(layer.lora_B.weight)
        if layer.lora_magnitude_vector is not None:
            tensors[f"{_PREFIX}{name}.lora_magnitude_vector"] = _full_cpu(layer.lora_magnitude_vector)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    write_atomic(out / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_regex(pattern: str, path: Path, key: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AdapterFormatError(f"{path}: {key}: {pattern!r} is not a valid regex ({exc})") from None


def _read_config(path: Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json``: every key ft uses has the JSON type and range it needs.

    Raises:
        AdapterFormatError: naming the file and the key (missing file, not JSON, not an object, a
            non-number ``r``/``lora_alpha``, an empty or malformed ``target_modules``, ...).
    """
    if not path.is_file():
        raise AdapterFormatError(f"{path}: adapter config not found")
    try:
        config = json.loads(path.read_bytes())
    except OSError as exc:
        raise AdapterFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise AdapterFormatError(f"{path}: not valid JSON (not UTF-8 text)") from exc
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{path}: expected a JSON object, got {type(config).__name__}")
    expected = {"peft_type": "LORA", "bias": "none", "fan_in_fan_out": False}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise AdapterFormatError(f"{path}: {key}={config.get(key)!r} is not supported (need {value!r})")
    for key in ("modules_to_save", "layers_to_transform", "trainable_token_indices"):
        if config.get(key):
            raise AdapterFormatError(f"{path}: {key}={config[key]!r} is not supported")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise AdapterFormatError(f"{path}: missing key {key!r}")
    if not _is_rank(config["r"]):
        raise AdapterFormatError(f"{path}: r={config['r']!r} must be a positive integer")
    if not _is_number(config["lora_alpha"]):
        raise AdapterFormatError(f"{path}: lora_alpha={config['lora_alpha']!r} must be a number")
    dropout = config.get("lora_dropout")
    if dropout is not None and not (_is_number(dropout) and 0 <= dropout < 1):
        raise AdapterFormatError(f"{path}: lora_dropout={dropout!r} must be a number in [0, 1)")
    for key in ("use_dora", "use_rslora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise AdapterFormatError(f"{path}: {key}={config[key]!r} must be true or false")
    target = config["target_modules"]
    if isinstance(target, str):
        _check_regex(target, path, "target_modules")
    elif not isinstance(target, list) or not all(isinstance(t, str) and t for t in target):
        raise AdapterFormatError(
            f"{path}: target_modules={target!r} must be a list of module names or a regex"
        )
    elif not target:
        raise AdapterFormatError(f"{path}: target_modules is empty")
    for key, valid, kind in (
        ("rank_pattern", _is_rank, "a positive integer"),
        ("alpha_pattern", _is_number, "a number"),
    ):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise AdapterFormatError(f"{path}: {key} must be an object of regex -> value")
        for pattern, value in patterns.items():
            _check_regex(rf"(.*\.)?({pattern})$", path, f"{key}[{pattern!r}]")
            if not valid(value):
                raise AdapterFormatError(f"{path}: {key}[{pattern!r}]={value!r} must be {kind}")
    return config


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        bin_path = directory / "adapter_model.bin"
        hint = (
            " (pickled adapter_model.bin is refused; convert it to safetensors)" if bin_path.exists() else ""
        )
        raise AdapterFormatError(f"{path}: adapter weights not found{hint}")
    from safetensors.torch import load_file

    try:
        loaded = load_file(path)
    except Exception as exc:  # safetensors raises its own error types (truncated header, bad offsets)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AdapterFormatError(f"{path}: not a readable safetensors file ({detail})") from exc
    out = {}
    for key, tensor in loaded.items():
        if not key.startswith(_PREFIX):
            raise AdapterFormatError(f"{path}: key {key!r} does not start with {_PREFIX!r}")
        if not tensor.is_floating_point():
            raise AdapterFormatError(f"{path}: key {key!r} holds {tensor.dtype}, not a floating-point tensor")
        out[key[len(_PREFIX) :]] = tensor
    return out


def _shapes(d_in: int, d_out: int, rank: int, dora: bool) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"lora_A.weight": (rank, d_in), "lora_B.weight": (d_out, rank)}
    if dora:
        out["lora_magnitude_vector"] = (d_out,)
    return out


def _validate(
    shapes: dict[str, dict[str, tuple[int, ...]]], tensors: dict[str, torch.Tensor], path: Path
) -> None:
    """Every expected key present with its shape, no key left over; raises before anything changes."""
    remaining = dict(tensors)
    for name, layer_shapes in shapes.items():
        for suffix, shape in layer_shapes.items():
            key = f"{name}.{suffix}"
            if key not in remaining:
                raise AdapterFormatError(f"{path}: missing key {_PREFIX + key!r}")
            value = remaining.pop(key)
            if tuple(value.shape) != shape:
                raise AdapterShapeError(
                    f"{name}: {suffix} has shape {tuple(value.shape)} in {path.name}, layer expects {shape}"
                )
    if remaining:
        raise AdapterFormatError(f"{path}: key {_PREFIX + next(iter(remaining))!r} fits no LoRA layer")


def _params(layer: LoRALinear) -> dict[str, torch.Tensor]:
    out = {"lora_A.weight": layer.lora_A.weight, "lora_B.weight": layer.lora_B.weight}
    if layer.lora_magnitude_vector is not None:
        out["lora_magnitude_vector"] = layer.lora_magnitude_vector
    return out


def _check_layer_config(name: str, layer: LoRALinear, config: dict[str, Any], path: Path) -> None:
    want = {
        "r": _pattern_value(config.get("rank_pattern"), name, config["r"]),
        "lora_alpha": _pattern_value(config.get("alpha_pattern"), name, config["lora_alpha"]),
        "use_dora": bool(config.get("use_dora", False)),
        "use_rslora": bool(config.get("use_rslora", False)),
    }
    have = {
        "r": layer.rank,
        "lora_alpha": layer.alpha,
        "use_dora": layer.use_dora,
        "use_rslora": layer.use_rslora,
    }
    for key, value in want.items():
        if float(have[key]) != float(value):
            raise AdapterFormatError(f"{path}: {key}={value!r} but layer {name} has {have[key]!r}")


def load_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    quantize: str | QuantConfig | None = None,
    adapter_dtype: torch.dtype | None = None,
) -> list[str]:
    """Load a PEFT-format LoRA/DoRA adapter into `model`.

    A model without adapters gets them first (`apply_lora` with the file's settings); a model that
    already has them must agree with the file's rank, alpha, DoRA and rsLoRA settings. Every key and
    shape is checked before any tensor is copied, so a bad file leaves the model untouched.

    Args:
        model: The base model (transformers' module paths for PEFT files made on HF models).
        directory: Directory holding `adapter_config.json` and `adapter_model.safetensors`.
        quantize: Quantise the frozen base weights while wrapping (QLoRA); ignored if already wrapped.
        adapter_dtype: Dtype for newly created adapter weights.

    Returns:
        Names of the layers that received adapter weights.
    """
    root = Path(directory)
    config_path = root / CONFIG_NAME
    config = _read_config(config_path)
    tensors = _read_tensors(root)
    weights_path = root / WEIGHTS_NAME
    layers = dict(lora_modules(model))
    dora = bool(config.get("use_dora", False))
    if layers:
        for name, layer in layers.items():
            _check_layer_config(name, layer, config, config_path)
        _validate(
            {n: _shapes(m.in_features, m.out_features, m.rank, dora) for n, m in layers.items()},
            tensors,
            weights_path,
        )
    else:
        target = config["target_modules"]
        target = target if isinstance(target, str) else list(target)
        linears = _linear_layers(model)
        rank_pattern = config.get("rank_pattern") or None
        shapes = {}
        try:
            targeted = match_targets(model, target)
        except TargetNotFoundError as exc:
            raise AdapterFormatError(f"{config_path}: target_modules: {exc}") from exc
        for full in targeted:
            name = clean_name(full)
            rank = int(_pattern_value(rank_pattern, name, int(config["r"])))
            d_out, d_in = linears[full].weight.shape
            shapes[name] = _shapes(d_in, d_out, rank, dora)
        _validate(shapes, tensors, weights_path)
        apply_lora(
            model,
            target_modules=target,
            rank=int(config["r"]),
            alpha=float(config["lora_alpha"]),
            dropout=float(config.get("lora_dropout", 0.0)),
            use_rslora=bool(config.get("use_rslora", False)),
            use_dora=dora,
            quantize=quantize,
            adapter_dtype=adapter_dtype,
            rank_pattern=rank_pattern,
            alpha_pattern=config.get("alpha_pattern") or None,
        )
        layers = dict(lora_modules(model))
    with torch.no_grad():
        for name, layer in layers.items():
            for suffix, param in _params(layer).items():
                value = tensors[f"{name}.{suffix}"]
                param.copy_(value.to(device=param.device, dtype=param.dtype))
    return list(layers)
