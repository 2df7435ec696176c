"""Decoder configuration parsed from a Hugging Face ``config.json`` dictionary.

Two schemas exist for the rotary embedding (RoPE, Su et al. 2021, arXiv:2104.09864) settings: the one
on the Hub (``rope_theta`` plus an optional ``rope_scaling`` dict whose type key is ``rope_type`` or the
older ``type``) and the one transformers 5 writes (``rope_parameters`` holding ``rope_theta`` and the
scaling keys). Both parse into one frozen :class:`DecoderConfig`; :meth:`DecoderConfig.to_hf_dict`
writes the Hub schema, which every reader (transformers 4 and 5, vLLM, llama.cpp converters) accepts.

Keys every family shares are read here; keys of one family (Qwen2's ``use_sliding_window``, Gemma 2's
soft-caps) are read and written by that family's :class:`~ft_models._family.Family` entry in the
registry, which maps them to the family-neutral fields below (per-layer windows, soft-caps, attention
scale). This module holds no family knowledge.

A ``config.json`` is foreign input: every shared key is checked for its JSON type and range before it is
used (``"hidden_size": "64"``, a list, ``0`` or a negative ``rms_norm_eps`` raise :class:`ConfigError`
naming the file and the key), so a bad file never reaches ``int()``/``float()`` or the model builder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["FULL", "SLIDING", "DecoderConfig", "RopeConfig"]

FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' ``layer_types`` values
ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_DTYPES = ("float32", "float16", "bfloat16")
# Shared config.json keys and what each must hold (null counts as absent: the default applies).
_POSITIVE_INTS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
)
_POSITIVE_NUMBERS = (
    "rms_norm_eps",
    "rope_theta",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
)
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings.

    Attributes:
        rope_type: ``default`` (plain RoPE), ``linear`` (position interpolation: every frequency divided
            by ``factor``) or ``llama3`` (Llama 3.1's piecewise frequency scaling).
        theta: Base of the geometric frequency series.
        factor: Scaling factor of ``linear`` and ``llama3``.
        low_freq_factor: ``llama3`` only: wavelengths above ``original / low_freq_factor`` are divided.
        high_freq_factor: ``llama3`` only: wavelengths below ``original / high_freq_factor`` are kept.
        original_max_position_embeddings: ``llama3`` only: the pre-training context length.
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def to_hf_scaling(self) -> dict[str, Any] | None:
        """The Hub-style ``rope_scaling`` dict (``None`` for plain RoPE)."""
        if self.rope_type == "default":
            return None
        out: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            out["low_freq_factor"] = self.low_freq_factor
            out["high_freq_factor"] = self.high_freq_factor
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        return out


@dataclass(frozen=True)
class DecoderConfig:
    """Shape and numerics of a decoder-only transformer.

    Built with :meth:`from_hf_dict` or :meth:`from_file`; presets live in each family's builder module.
    ``head_dim`` is explicit because it may differ from ``hidden_size // num_attention_heads``.

    Family-neutral optional features (each family's config reader maps its own keys to them):

    * ``sliding_window`` with ``layer_types``: layer ``i`` attends to the last ``sliding_window`` keys
      when ``layer_types`` is ``None`` (every layer) or ``layer_types[i] == "sliding_attention"``.
    * ``query_pre_attn_scalar``: attention scale ``1 / sqrt(query_pre_attn_scalar)`` instead of
      ``1 / sqrt(head_dim)``.
    * ``attn_logit_softcapping`` / ``final_logit_softcapping``: ``cap * tanh(x / cap)`` on attention
      scores / output logits (Gemma 2).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "llama"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = dataclasses.field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    dtype: str | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        for key in _POSITIVE_INTS[:-1]:
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"key {key!r} = {_show(value)} must be a positive integer")
        for key in ("rms_norm_eps", *_POSITIVE_NUMBERS[2:]):
            value = getattr(self, key)
            if value is not None and not _is_positive(value):
                raise ConfigError(f"key {key!r} = {_show(value)} must be a positive number")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"key 'num_attention_heads' = {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads = {self.num_key_value_heads}"
            )
        if self.sliding_window is not None and (not _is_int(self.sliding_window) or self.sliding_window < 1):
            raise ConfigError(f"key 'sliding_window' = {_show(self.sliding_window)} must be positive or null")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ConfigError(
                    f"key 'layer_types' has {len(self.layer_types)} entries for "
                    f"num_hidden_layers={self.num_hidden_layers}"
                )
            bad = [t for t in self.layer_types if t not in (FULL, SLIDING)]
            if bad:
                raise ConfigError(f"key 'layer_types' entry {bad[0]!r} is not one of {FULL!r}, {SLIDING!r}")

    @property
    def architecture(self) -> str:
        """The transformers class name written to ``architectures``."""
        from ._registry import FAMILIES  # the registry imports the builders, which import this module

        return FAMILIES[self.model_type].architecture

    def window(self, layer: int) -> int | None:
        """Sliding-window size of layer ``layer`` (``None``: full causal attention)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    @classmethod
    def from_file(cls, path: str | Path) -> DecoderConfig:
        """Parse a ``config.json`` file.

        Raises:
            ConfigError: The file is missing, is not JSON, or holds an unsupported setting.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: file not found") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_hf_dict(data, source=str(path))

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], *, source: str = "config.json") -> DecoderConfig:
        """Parse an HF config dictionary (Hub or transformers-5 schema).

        Args:
            data: The parsed ``config.json``.
            source: Name of the file the dict came from, used in error messages.

        Raises:
            ConfigError: Unknown ``model_type``, rope type or activation, or a missing required key.
        """
        from ._registry import FAMILIES

        model_type = data.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: key 'model_type' = {model_type!r} is not supported "
                f"(supported: {', '.join(sorted(FAMILIES))})"
            )
        family = FAMILIES[model_type]
        _check_shared_keys(data, source)

        def req(key: str) -> Any:
            if data.get(key) is None:
                raise ConfigError(f"{source}: required key {key!r} is missing")
            return data[key]

        hidden, heads = int(req("hidden_size")), int(req("num_attention_heads"))
        if not data.get("head_dim") and heads > hidden:
            raise ConfigError(
                f"{source}: key 'num_attention_heads' = {heads} exceeds hidden_size = {hidden} "
                "and no head_dim is given (head_dim would be 0)"
            )
        req("num_hidden_layers")  # family readers may derive per-layer settings from it
        dtype = data.get("dtype", data.get("torch_dtype"))
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(f"{source}: key 'dtype' = {dtype!r} is not one of {', '.join(_DTYPES)}")
        rope = _parse_rope(data, source)
        fields: dict[str, Any] = {
            "head_dim": int(data.get("head_dim") or hidden // heads),
            "tie_word_embeddings": bool(data.get("tie_word_embeddings", False)),
            "attention_bias": bool(data.get("attention_bias", False)),
            "mlp_bias": bool(data.get("mlp_bias", False)),
            "hidden_act": data.get("hidden_act", "silu"),
        }
        try:
            fields.update(family.read(data, source))  # family keys and family defaults
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: a {model_type} key has an invalid value ({e})") from None
        act_key = family.activation_key
        if fields["hidden_act"] not in family.activations:
            raise ConfigError(
                f"{source}: key {act_key!r} = {fields['hidden_act']!r} is not supported "
                f"(supported: {', '.join(family.activations)})"
            )
        try:
            return cls(
                vocab_size=int(req("vocab_size")),
                hidden_size=hidden,
                intermediate_size=int(req("intermediate_size")),
                num_hidden_layers=int(req("num_hidden_layers")),
                num_attention_heads=heads,
                num_key_value_heads=int(data.get("num_key_value_heads") or heads),
                model_type=model_type,
                max_position_embeddings=int(data.get("max_position_embeddings") or 2048),
                rms_norm_eps=float(data.get("rms_norm_eps") or 1e-6),
                rope=rope,
                bos_token_id=data.get("bos_token_id"),
                eos_token_id=data.get("eos_token_id"),
                pad_token_id=data.get("pad_token_id"),
                dtype=dtype,
                **fields,
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """A Hub-style ``config.json`` dict (``rope_theta`` + ``rope_scaling``) that transformers loads.

        Shared keys are written here; the family's entry adds its own keys and drops shared ones its
        transformers class does not have.
        """
        from ._registry import FAMILIES

        family = FAMILIES[self.model_type]
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": self.rope.to_hf_scaling(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        for key in family.drop_keys:
            out.pop(key, None)
        out.update(family.write(self))
        if self.dtype is not None:
            out["torch_dtype"] = self.dtype  # read by transformers 4 and vLLM
            out["dtype"] = self.dtype  # read by transformers 5
        return out


def _parse_rope(data: dict[str, Any], source: str) -> RopeConfig:
    """Read RoPE settings from either schema; the transformers-5 ``rope_parameters`` wins if present."""
    params = data.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{source}: key 'rope_parameters' must be an object or null, got {_show(params)}")
    if isinstance(params, dict):
        key, scaling = "rope_parameters", params
        theta = params.get("rope_theta", data.get("rope_theta"))
        if params.get("rope_theta") is not None and not _is_positive(params["rope_theta"]):
            raise ConfigError(
                f"{source}: key 'rope_parameters.rope_theta' = {_show(params['rope_theta'])} "
                "must be a positive number"
            )
    else:
        key, scaling = "rope_scaling", data.get("rope_scaling") or {}
        theta = data.get("rope_theta")
        if not isinstance(scaling, dict):
            raise ConfigError(f"{source}: key 'rope_scaling' must be an object or null, got {_show(scaling)}")
    theta = 10000.0 if theta is None else theta
    for name in ("factor", "low_freq_factor", "high_freq_factor"):
        if scaling.get(name) is not None and not _is_positive(scaling[name]):
            raise ConfigError(
                f"{source}: key '{key}.{name}' = {_show(scaling[name])} must be a positive number"
            )
    original = scaling.get("original_max_position_embeddings")
    if original is not None and not (_is_int(original) and original > 0):
        raise ConfigError(
            f"{source}: key '{key}.original_max_position_embeddings' = {_show(original)} "
            "must be a positive integer"
        )
    type_key = "rope_type" if "rope_type" in scaling else "type"
    rope_type = scaling.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"{source}: key '{key}.{type_key}' = {rope_type!r} is not supported "
            f"(supported: {', '.join(ROPE_TYPES)})"
        )
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    if "factor" not in scaling:
        raise ConfigError(f"{source}: key '{key}.factor' is required for rope type {rope_type!r}")
    if rope_type == "linear":
        return RopeConfig(rope_type="linear", theta=float(theta), factor=float(scaling["factor"]))
    missing = [k for k in _LLAMA3_KEYS if scaling.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: key '{key}.{missing[0]}' is required for rope type 'llama3'")
    return RopeConfig(
        rope_type="llama3",
        theta=float(theta),
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: Any) -> bool:
    """A finite number above zero (JSON int or float; ``true`` is not a number)."""
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | list | dict | None) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_shared_keys(data: dict[str, Any], source: str) -> None:
    """Refuse a shared key of the wrong JSON type or range, naming the file and the key.

    Raises:
        ConfigError: e.g. ``"hidden_size": "64"``, ``"num_hidden_layers": 0``, ``"rms_norm_eps": -1``,
            ``"tie_word_embeddings": "false"`` (a string is truthy: it would silently tie).
    """
    for key in _POSITIVE_INTS:
        value = data.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            raise ConfigError(f"{source}: key {key!r} = {_show(value)} must be a positive integer")
    for key in _POSITIVE_NUMBERS:
        value = data.get(key)
        if value is not None and not _is_positive(value):
            raise ConfigError(f"{source}: key {key!r} = {_show(value)} must be a positive number")
    for key in _BOOLS:
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} = {_show(value)} must be true or false")
    for key in _TOKEN_IDS:
        value = data.get(key)
        ids = value if isinstance(value, list) and key == "eos_token_id" else [value]
        if value is not None and not (ids and all(_is_int(i) for i in ids)):
            kind = "an integer, a list of integers" if key == "eos_token_id" else "an integer"
            raise ConfigError(f"{source}: key {key!r} = {_show(value)} must be {kind} or null")
    types = data.get("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise ConfigError(f"{source}: key 'layer_types' = {_show(types)} must be a list of strings or null")
    act = data.get("hidden_act")
    if act is not None and not isinstance(act, str):
        raise ConfigError(f"{source}: key 'hidden_act' = {_show(act)} must be a string")
