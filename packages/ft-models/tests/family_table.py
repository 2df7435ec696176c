"""The parity table: one row per family (transformers class, awkward-shape configs, kernels, wrong variants,
saved-config keys, cached-decoding case), read by ``test_families_parity.py`` and the family config tests.

Rows and their wrong variants:

* ``llama``: rope scaling / theta ignored (the rope a loader that misread the keys would use);
* ``qwen2``: window off by one, window on every layer (``max_window_layers`` ignored), window applied
  although ``use_sliding_window`` is false, q/k/v bias dropped;
* ``qwen3``: per-head q/k RMSNorm left out, window off by one;
* ``mistral``: window off by one, window dropped, a window where the config has none;
* ``gemma2``: attention or final soft-cap off, the norm without its +1, window off by one, no sqrt(d)
  embedding scale, the 1/sqrt(head_dim) scale instead of ``query_pre_attn_scalar``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from family_support import shape, swapped, variant
from llama_support import LINEAR_ROPE, LLAMA3_ROPE
from transformers import PreTrainedModel

from ft_models import CausalLM, EagerKernel, RMSNorm, RopeConfig, UnitOffsetRMSNorm

Wrong = Callable[[CausalLM], dict[str, CausalLM]]


@dataclass(frozen=True)
class Row:
    """One family's entry in the table.

    Attributes:
        reference: The transformers class the configs build (and ft's saved directory must load as).
        cases: Name -> ``config.json`` dict.
        kernels: Attention settings the logits and padded checks run under (``set_attention_kernel``).
        wrong: Wrong variants of a loaded model (same weights), for the logits check.
        structure: Extra checks of the loaded model against the reference.
        saved_expect: Keys (and values) ft's written ``config.json`` must hold.
        saved_break: Keys overwritten in it that must change transformers' logits.
        cache_case: ``(case, overrides)``: the config of the cached-decoding check (weights std 0.3).
        cache_seed: Its weight seed (chosen so every row decodes at least 8 distinct tokens).
        cache_wrong: Wrong variants for the cached-decoding check.
    """

    reference: str
    cases: dict[str, dict[str, Any]]
    kernels: tuple[str, ...]
    wrong: Wrong
    structure: Callable[[PreTrainedModel, CausalLM, Path], None]
    saved_expect: Callable[[PreTrainedModel, CausalLM], dict[str, Any]]
    saved_break: Callable[[CausalLM], dict[str, Any]]
    cache_case: tuple[str, dict[str, Any]]
    cache_seed: int
    cache_wrong: Wrong


# --- llama -------------------------------------------------------------------------------------------


def _llama(name: str, tie: bool, scaling: dict[str, Any] | None, theta: float) -> dict[str, Any]:
    return {**shape(name), "model_type": "llama", "tie_word_embeddings": tie, "rope_scaling": scaling,
            "rope_theta": theta, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip


def _llama_structure(hf: PreTrainedModel, model: CausalLM, directory: Path) -> None:
    # transformers 5 writes its own rope schema; ft must read it.
    assert "rope_parameters" in json.loads((directory / "config.json").read_text())
    assert model.config.tie_word_embeddings == hf.config.tie_word_embeddings


def _rope_ignored(model: CausalLM) -> dict[str, CausalLM]:
    return {"rope-ignored": variant(model, rope=RopeConfig(theta=10000.0))}


LLAMA = Row(
    reference="LlamaForCausalLM",
    cases={
        "gqa4-untied-llama3": _llama("gqa4", False, LLAMA3_ROPE, 10000.0),
        "gqa7-tied-llama3": _llama("gqa7", True, LLAMA3_ROPE, 10000.0),
        "gqa4-tied-linear": _llama("gqa4", True, LINEAR_ROPE, 10000.0),
        "gqa7-untied-default": _llama("gqa7", False, None, 500000.0),
    },
    kernels=("sdpa", "eager", "grouped"),
    wrong=_rope_ignored,
    structure=_llama_structure,
    saved_expect=lambda hf, m: {"model_type": "llama", "tie_word_embeddings": hf.config.tie_word_embeddings},
    saved_break=lambda m: {"rope_theta": 2 * m.config.rope.theta},
    cache_case=("gqa4-untied-llama3", {}),
    cache_seed=0,
    cache_wrong=_rope_ignored,
)

# --- qwen2 -------------------------------------------------------------------------------------------

QWEN2_WINDOW = 7


def _without_qkv_bias(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    with torch.no_grad():
        for layer in wrong.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.bias.zero_()
    return wrong


def _qwen2_wrong(model: CausalLM) -> dict[str, CausalLM]:
    c = model.config
    out = {"no-qkv-bias": _without_qkv_bias(model)}
    if c.sliding_window is not None:
        out["window+1"] = variant(model, sliding_window=c.sliding_window + 1)
        out["window-on-all-layers"] = variant(model, layer_types=None)
    else:
        types = tuple("sliding_attention" if i >= 1 else "full_attention" for i in range(c.num_hidden_layers))
        out["window-although-off"] = variant(model, sliding_window=QWEN2_WINDOW, layer_types=types)
    return out


def _qwen2_structure(hf: PreTrainedModel, model: CausalLM, directory: Path) -> None:
    c = model.config
    assert [c.window(i) for i in range(c.num_hidden_layers)] == [
        layer.self_attn.sliding_window for layer in hf.model.layers
    ]
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None
    assert attn.o_proj.bias is None
    assert model.model.layers[0].mlp.up_proj.bias is None


def _qwen2_saved(hf: PreTrainedModel, model: CausalLM) -> dict[str, Any]:
    on = model.config.sliding_window is not None
    expect = {
        "model_type": "qwen2",
        "use_sliding_window": on,
        "tie_word_embeddings": hf.config.tie_word_embeddings,
    }
    return expect | ({"max_window_layers": 2, "sliding_window": QWEN2_WINDOW} if on else {})


QWEN2 = Row(
    reference="Qwen2ForCausalLM",
    cases={
        # The lower two layers attend fully, the upper two slide.
        "window-mid-untied": {
            **shape("gqa4", num_hidden_layers=4),
            "model_type": "qwen2",
            "use_sliding_window": True,
            "sliding_window": QWEN2_WINDOW,
            "max_window_layers": 2,
            "tie_word_embeddings": False,
        },
        # Configured like the released checkpoints: window keys present, switched off.
        "released-tied": {
            **shape("gqa7"),
            "model_type": "qwen2",
            "use_sliding_window": False,
            "sliding_window": QWEN2_WINDOW,
            "max_window_layers": 1,
            "tie_word_embeddings": True,
        },
    },
    kernels=("sdpa", "eager", "grouped"),
    wrong=_qwen2_wrong,
    structure=_qwen2_structure,
    saved_expect=_qwen2_saved,
    # The window switched on (or off) in the written config.
    saved_break=lambda m: {
        "use_sliding_window": m.config.sliding_window is None,
        "sliding_window": QWEN2_WINDOW,
        "max_window_layers": 1,
        "layer_types": None,
    },
    cache_case=("window-mid-untied", {}),
    cache_seed=5,
    cache_wrong=lambda m: {"window+1": variant(m, sliding_window=QWEN2_WINDOW + 1)},
)

# --- qwen3 -------------------------------------------------------------------------------------------

QWEN3_WINDOW = 6


def _without_qk_norm(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    for layer in wrong.model.layers:
        layer.self_attn.q_norm = layer.self_attn.k_norm = None
    return wrong


def _qwen3_wrong(model: CausalLM) -> dict[str, CausalLM]:
    out = {"no-qk-norm": _without_qk_norm(model)}
    if model.config.sliding_window is not None:
        out["window+1"] = variant(model, sliding_window=model.config.sliding_window + 1)
    return out


def _qwen3_structure(hf: PreTrainedModel, model: CausalLM, directory: Path) -> None:
    assert model.model.layers[0].self_attn.q_norm.weight.shape == (model.config.head_dim,)
    assert model.config.head_dim != model.config.hidden_size // model.config.num_attention_heads


QWEN3 = Row(
    reference="Qwen3ForCausalLM",
    cases={
        "gqa4-untied": {**shape("gqa4"), "model_type": "qwen3", "tie_word_embeddings": False},
        "gqa7-tied-bias-window": {
            **shape("gqa7"),
            "model_type": "qwen3",
            "tie_word_embeddings": True,
            "attention_bias": True,
            "use_sliding_window": True,
            "sliding_window": QWEN3_WINDOW,
            "max_window_layers": 1,
        },
    },
    kernels=("sdpa", "eager", "grouped"),
    wrong=_qwen3_wrong,
    structure=_qwen3_structure,
    saved_expect=lambda hf, m: {
        "model_type": "qwen3",
        "head_dim": m.config.head_dim,
        "use_sliding_window": m.config.sliding_window is not None,
    },
    # q/k norm eps a million times larger is a config transformers honours.
    saved_break=lambda m: {"rms_norm_eps": 1.0},
    cache_case=("gqa7-tied-bias-window", {}),
    cache_seed=4,
    cache_wrong=lambda m: {
        "window+1": variant(m, sliding_window=QWEN3_WINDOW + 1),
        "no-qk-norm": _without_qk_norm(m),
    },
)

# --- mistral -----------------------------------------------------------------------------------------

MISTRAL_WINDOW = 6


def _mistral_wrong(model: CausalLM) -> dict[str, CausalLM]:
    w = model.config.sliding_window
    if w is None:
        return {"window-where-none": variant(model, sliding_window=MISTRAL_WINDOW)}
    return {
        "window+1": variant(model, sliding_window=w + 1),
        "no-window": variant(model, sliding_window=None),
    }


def _mistral_structure(hf: PreTrainedModel, model: CausalLM, directory: Path) -> None:
    assert [layer.self_attn.window for layer in model.model.layers] == [hf.config.sliding_window] * 3


MISTRAL = Row(
    reference="MistralForCausalLM",
    cases={
        "gqa4-window-untied": {
            **shape("gqa4"),
            "model_type": "mistral",
            "sliding_window": MISTRAL_WINDOW,
            "tie_word_embeddings": False,
        },
        # Mistral 7B v0.2 / v0.3: `sliding_window: null`.
        "gqa7-null-window-tied": {
            **shape("gqa7"),
            "model_type": "mistral",
            "sliding_window": None,
            "tie_word_embeddings": True,
            "rope_theta": 1e6,
        },
    },
    kernels=("sdpa", "eager", "grouped"),
    wrong=_mistral_wrong,
    structure=_mistral_structure,
    saved_expect=lambda hf, m: {"model_type": "mistral", "sliding_window": m.config.sliding_window},
    saved_break=lambda m: {
        "sliding_window": MISTRAL_WINDOW if m.config.sliding_window is None else m.config.sliding_window + 1
    },
    cache_case=("gqa4-window-untied", {}),
    cache_seed=2,
    cache_wrong=_mistral_wrong,
)

# --- gemma2 ------------------------------------------------------------------------------------------


def _norm_without_offset(model: CausalLM) -> CausalLM:
    """Every Gemma norm replaced by a plain RMSNorm with the same stored weight (no ``1 +``)."""

    def replace(module: torch.nn.Module) -> torch.nn.Module | None:
        if not isinstance(module, UnitOffsetRMSNorm):
            return None
        plain = RMSNorm(module.weight.shape[0], module.eps)
        plain.weight = module.weight
        return plain

    return swapped(model, replace)


def _without_embed_scale(model: CausalLM) -> CausalLM:
    wrong = variant(model)
    wrong.model.embed_scale = 1.0
    return wrong


def _gemma2_wrong(model: CausalLM) -> dict[str, CausalLM]:
    c = model.config
    assert c.sliding_window is not None
    return {
        "attn-cap-off": variant(model, attn_logit_softcapping=None),
        "final-cap-off": variant(model, final_logit_softcapping=None),
        "norm-without-+1": _norm_without_offset(model),
        "window+1": variant(model, sliding_window=c.sliding_window + 1),
        "no-embed-scale": _without_embed_scale(model),
        "head-dim-scale": variant(model, query_pre_attn_scalar=None),
    }


def _gemma2_structure(hf: PreTrainedModel, model: CausalLM, directory: Path) -> None:
    assert [layer.self_attn.window for layer in model.model.layers] == [
        layer.self_attn.sliding_window for layer in hf.model.layers
    ]
    kernel = model.model.layers[0].self_attn.kernel
    assert isinstance(kernel, EagerKernel)  # chosen by the builder: SDPA cannot cap scores
    assert repr(kernel.score_mod) == f"soft_cap({hf.config.attn_logit_softcapping})"


GEMMA2 = Row(
    reference="Gemma2ForCausalLM",
    cases={
        # Sliding, global, sliding, global; caps small enough to bind.
        "gqa4-tied": {
            **shape("gqa4", num_hidden_layers=4),
            "model_type": "gemma2",
            "sliding_window": 5,
            "query_pre_attn_scalar": 20,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
            "tie_word_embeddings": True,
        },
        "gqa7-untied-layer-types": {
            **shape("gqa7", num_hidden_layers=4),
            "model_type": "gemma2",
            "sliding_window": 7,
            "query_pre_attn_scalar": 10,
            "attn_logit_softcapping": 8.0,
            "final_logit_softcapping": 4.0,
            "tie_word_embeddings": False,
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        },
    },
    kernels=("eager",),  # the only kernel that applies the attention soft-cap (auto keeps it)
    wrong=_gemma2_wrong,
    structure=_gemma2_structure,
    saved_expect=lambda hf, m: {
        "model_type": "gemma2",
        "attn_logit_softcapping": m.config.attn_logit_softcapping,
        "final_logit_softcapping": m.config.final_logit_softcapping,
        "query_pre_attn_scalar": hf.config.query_pre_attn_scalar,
        "sliding_window": m.config.sliding_window,
        "layer_types": list(hf.config.layer_types),
        "hidden_activation": "gelu_pytorch_tanh",
    },
    saved_break=lambda m: {"final_logit_softcapping": None},
    # Untied: with a tied head and the sqrt(d)-scaled embedding a random model predicts its input token.
    cache_case=(
        "gqa4-tied",
        {"tie_word_embeddings": False, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    ),
    cache_seed=3,
    cache_wrong=lambda m: {
        "window+1": variant(m, sliding_window=6),
        "attn-cap-off": variant(m, attn_logit_softcapping=None),
    },
)

TABLE: dict[str, Row] = {"llama": LLAMA, "qwen2": QWEN2, "qwen3": QWEN3, "mistral": MISTRAL, "gemma2": GEMMA2}
