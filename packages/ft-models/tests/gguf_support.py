"""Test support: write small GGUF files the way llama.cpp's converter lays them out.

The writer goes from a transformers ``LlamaForCausalLM`` state dict to llama.cpp's names and its q/k row
order (each head's rotary pairs made adjacent), with block quantisation from the ``gguf`` package.
Tests then read the file with ft and with transformers' own GGUF loader and compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType

# HF module under model.layers.{i} -> llama.cpp's name under blk.{i}
_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# Quantisation per llama.cpp module (row length must be a multiple of the block size, 32 here).
MIXED_QUANT: dict[str, Any] = {
    "token_embd": Q.Q8_0,
    "output": Q.Q8_0,
    "attn_q": Q.Q4_1,
    "attn_k": Q.Q8_0,
    "attn_v": Q.F16,
    "attn_output": Q.F16,
    "ffn_gate": Q.Q5_1,
    "ffn_up": Q.Q4_0,
    "ffn_down": Q.Q5_0,
}


def interleave_rotary_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from rotate-half to llama.cpp's interleaved layout.

    Per head, rotate-half keeps the first halves of the rotary pairs in rows ``[0, h_d/2)`` and the
    second halves in ``[h_d/2, h_d)``; llama.cpp stores pair ``j``'s two rows next to each other.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK[module]}.{kind}"


def write_llama_gguf(
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    *,
    quant: Mapping[str, Any] | None = None,
    architecture: str = "llama",
    rope_freqs: np.ndarray | None = None,
    metadata: Mapping[str, Any] | None = None,
    omit_keys: Iterable[str] = (),
    tokens: list[str] | None = None,
    extra_tensors: Mapping[str, np.ndarray] | None = None,
    permute_rotary: bool = True,
) -> Path:
    """Write ``state_dict`` (HF names, rotate-half q/k) as a llama.cpp-style GGUF file.

    Args:
        path: Output file.
        state_dict: HF-named tensors; ``lm_head.weight`` is written only if present (untied).
        config: HF config values (``hidden_size``, ``num_attention_heads``, ...).
        quant: llama.cpp module name -> GGML type; absent modules are stored as F32.
        architecture: ``general.architecture`` and the metadata key prefix.
        rope_freqs: Per-frequency RoPE divisors stored as ``rope_freqs.weight`` (Llama 3.1 scaling).
        metadata: Extra key/values (str, int, float, bool or lists) written with their natural type.
        omit_keys: Metadata keys (with the prefix) left out, to test missing-key errors.
        tokens: A vocabulary for ``tokenizer.ggml.tokens``.
        extra_tensors: Tensors written as is under their GGUF names.
        permute_rotary: Interleave q/k rows as llama.cpp does for Llama (its Qwen2 / Qwen3 files keep
            the rotate-half order).
    """
    arch = architecture
    omit = set(omit_keys)
    writer = gguf.GGUFWriter(str(path), arch)
    values: dict[str, Any] = {
        f"{arch}.block_count": int(config["num_hidden_layers"]),
        f"{arch}.context_length": int(config["max_position_embeddings"]),
        f"{arch}.embedding_length": int(config["hidden_size"]),
        f"{arch}.feed_forward_length": int(config["intermediate_size"]),
        f"{arch}.attention.head_count": int(config["num_attention_heads"]),
        f"{arch}.attention.head_count_kv": int(config["num_key_value_heads"]),
        f"{arch}.attention.key_length": int(config["head_dim"]),
        f"{arch}.attention.value_length": int(config["head_dim"]),
        f"{arch}.rope.dimension_count": int(config["head_dim"]),
        f"{arch}.rope.freq_base": float(config["rope_theta"]),
        f"{arch}.attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        f"{arch}.vocab_size": int(config["vocab_size"]),
        "tokenizer.ggml.bos_token_id": int(config.get("bos_token_id", 1)),
        "tokenizer.ggml.eos_token_id": int(config.get("eos_token_id", 2)),
        **(metadata or {}),
    }
    if tokens is not None:
        values["tokenizer.ggml.tokens"] = tokens
    for key, value in values.items():
        if key in omit:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    n_heads, n_kv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    for hf_name, tensor in state_dict.items():
        name = gguf_name(hf_name)
        w = tensor.detach().to(torch.float32).numpy()
        if permute_rotary and ".attn_q." in name:  # weight and bias alike
            w = interleave_rotary_rows(w, n_heads)
        elif permute_rotary and ".attn_k." in name:
            w = interleave_rotary_rows(w, n_kv)
        module = name.split(".")[-2]
        qtype = (quant or {}).get(module, Q.F32) if w.ndim == 2 else Q.F32
        if qtype == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(w))
        elif qtype == Q.F16:
            writer.add_tensor(name, w.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
