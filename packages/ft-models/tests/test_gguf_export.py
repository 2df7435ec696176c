"""``save_gguf`` against two readers: ft's own (a bit-exact round trip of every family) and transformers'
GGUF loader (an independent implementation of llama.cpp's layout: names, q/k row order, Gemma's norm
offset). Each check also runs a deliberately wrong writer (another family's q/k row rule, no norm offset)
and asserts that it fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from family_support import ATOL, MARGIN, make_reference, not_close, shape
from llama_support import LINEAR_ROPE, LLAMA3_ROPE
from transformers import AutoModelForCausalLM

import ft_models
from ft_models import CausalLM, CheckpointError, _gguf

Q = gguf.GGMLQuantizationType

# Awkward shapes (odd vocab, head_dim != hidden / heads, GQA 4:1 and 7:1) of every family ft exports.
ROUND_TRIP: dict[str, dict[str, Any]] = {
    "llama-gqa4-untied-llama3": {**shape("gqa4"), "model_type": "llama", "rope_scaling": LLAMA3_ROPE},
    "llama-gqa7-tied-linear-bias": {
        **shape("gqa7"), "model_type": "llama", "tie_word_embeddings": True, "rope_scaling": LINEAR_ROPE,
        "attention_bias": True, "mlp_bias": True,
    },
    "qwen2-gqa7-tied": {**shape("gqa7"), "model_type": "qwen2", "tie_word_embeddings": True, "rope_theta": 1e6},
    "qwen3-gqa4-untied": {**shape("gqa4"), "model_type": "qwen3", "tie_word_embeddings": False},
    "mistral-gqa4": {**shape("gqa4"), "model_type": "mistral", "sliding_window": None},
    "gemma2-gqa7": {
        **shape("gqa7", num_hidden_layers=4), "model_type": "gemma2", "sliding_window": 5,
        "query_pre_attn_scalar": 12, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
    },
}  # fmt: skip

# What transformers' GGUF loader can express: it reads no head_dim for qwen3 (128 by default) and no
# attention scale or soft-caps for gemma2 (256, 50 and 30 by default), and reads Mistral as Llama.
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "llama-gqa4-untied": {**shape("gqa4"), "model_type": "llama", "rope_theta": 5e5},
    "llama-gqa7-tied": {**shape("gqa7"), "model_type": "llama", "tie_word_embeddings": True},
    "mistral-gqa4": {**shape("gqa4"), "model_type": "mistral", "sliding_window": None},
    "qwen2-gqa7-untied": {
        **shape("gqa7", head_dim=8), "model_type": "qwen2", "tie_word_embeddings": False, "rope_theta": 1e6,
    },
    "qwen3-gqa4-tied": {**shape("gqa4", head_dim=128), "model_type": "qwen3", "tie_word_embeddings": True},
    "gemma2-gqa4": {
        **shape("gqa4", num_hidden_layers=4, head_dim=256), "model_type": "gemma2", "sliding_window": 5,
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
    },
}  # fmt: skip


def _ft_model(config: dict[str, Any], directory: Path, seed: int, std: float = 0.3) -> CausalLM:
    """ft's model of a random transformers reference (norm gains around 1)."""
    hf = make_reference(config, std=std, seed=seed)
    hf.save_pretrained(directory)
    return ft_models.from_pretrained(directory)


def _write_wrong(model: CausalLM, path: Path) -> Path:
    """``model`` written through a broken table (the other family's q/k row rule; Gemma without its norm
    offset); the table is restored before anything reads the file back."""
    arch_name = _gguf.GGUF_ARCHITECTURE_OF[model.config.model_type]
    arch = _gguf._ARCHITECTURES[arch_name]
    if arch.unit_offset_norms:
        wrong = dataclasses.replace(arch, unit_offset_norms=False)
    else:
        wrong = dataclasses.replace(arch, rotary_rows={} if arch.rotary_rows else _gguf._LLAMA.rotary_rows)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(_gguf._ARCHITECTURES, arch_name, wrong)
        return ft_models.save_gguf(model, path, tensor_type="f32")


@pytest.mark.parametrize("name", list(ROUND_TRIP))
@torch.no_grad()
def test_f32_export_reads_back_bit_for_bit(name: str, tmp_path: Path) -> None:
    """Every tensor comes back identical; Gemma 2's norm gains, which llama.cpp stores as ``1 + w``, come
    back with the identical ``1 + w`` the model computes with (``w`` itself can lose low bits)."""
    config = ROUND_TRIP[name]
    model = _ft_model(config, tmp_path / "hf", seed=len(name))
    path = ft_models.save_gguf(model, tmp_path / "m.gguf", tensor_type="f32")
    back = ft_models.from_pretrained(path)
    ids = torch.randint(0, config["vocab_size"], (2, 33), generator=torch.Generator().manual_seed(0))
    assert torch.equal(back(ids), model(ids))
    src, got = model.state_dict(), back.state_dict()
    assert src.keys() == got.keys()
    for key, value in src.items():
        if config["model_type"] == "gemma2" and key.endswith("norm.weight"):
            assert torch.equal(1.0 + got[key], 1.0 + value), key
        else:
            assert torch.equal(got[key], value), key
    c = back.config
    assert c.model_type == ("llama" if config["model_type"] == "mistral" else config["model_type"])
    assert (c.head_dim, c.tie_word_embeddings, c.rope) == (
        model.config.head_dim, model.config.tie_word_embeddings, model.config.rope,
    )  # fmt: skip
    assert (c.sliding_window, c.attn_logit_softcapping, c.query_pre_attn_scalar) == (
        model.config.sliding_window, model.config.attn_logit_softcapping, model.config.query_pre_attn_scalar,
    )  # fmt: skip
    # Wrong variant: a writer with the other q/k row rule (or no norm offset) changes the model.
    broken = _write_wrong(model, tmp_path / "wrong.gguf")
    assert not_close(ft_models.from_pretrained(broken)(ids), model(ids), atol=MARGIN * ATOL)


@pytest.mark.parametrize("name", list(TRANSFORMERS))
@torch.no_grad()
def test_transformers_gguf_loader_gives_the_same_logits(name: str, tmp_path: Path) -> None:
    """transformers' ``from_pretrained(dir, gguf_file=...)`` of ft's f32 export: logits within 1e-5 of
    transformers' own model of the source directory (the same implementation on both sides, so the
    comparison sees the export alone; ft against transformers is the family parity tests' job)."""
    config = TRANSFORMERS[name]
    model = _ft_model(config, tmp_path / "hf", seed=len(name) + 1, std=0.1)  # the family tests' scale
    ft_models.save_gguf(model, tmp_path / "m.gguf", tensor_type="f32")
    ids = torch.randint(0, config["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    source = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    expected = source(ids).logits

    def transformers_logits(file: str) -> torch.Tensor:
        hf = AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file=file, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        return hf(ids).logits

    torch.testing.assert_close(transformers_logits("m.gguf"), expected, rtol=0, atol=ATOL)
    _write_wrong(model, tmp_path / "wrong.gguf")
    assert not_close(transformers_logits("wrong.gguf"), expected, atol=MARGIN * ATOL)


def _block_bound(source: np.ndarray, bits: int) -> np.ndarray:
    """Largest error a block quantiser with ``bits``-bit signed codes may make per value: one step of a
    scale set by the block's absolute maximum (32 values per block; a full step, as q4_0 clips its top
    code), plus the scale's own f16 rounding."""
    blocks = np.abs(source.reshape(-1, 32)).max(axis=1, keepdims=True)
    step = blocks / (2 ** (bits - 1) - 1)
    return np.broadcast_to(step + blocks * 2e-3 + 1e-7, (blocks.shape[0], 32)).reshape(source.shape)


@pytest.mark.parametrize(("tensor_type", "bits"), [("q8_0", 8), ("q5_1", 5), ("q4_0", 4)])
@torch.no_grad()
def test_quantised_export_types_and_error(tensor_type: str, bits: int, tmp_path: Path) -> None:
    """Norms and 1-D tensors stay f32; rows that do not split into 32-value blocks fall back to f16 (as
    llama.cpp's converter does); low-bit files keep the output projection at q8_0; every quantised tensor
    reads back within its block quantiser's error (and a 4-bit file misses the 8-bit bound)."""
    config = {
        **shape("gqa4", hidden_size=96, intermediate_size=152, vocab_size=101),
        "model_type": "qwen2", "tie_word_embeddings": False,
    }  # fmt: skip
    model = _ft_model(config, tmp_path / "hf", seed=5)
    path = ft_models.save_gguf(model, tmp_path / "m.gguf", tensor_type=tensor_type)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    wanted = Q[tensor_type.upper()]
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == Q.F32
    assert types["blk.0.attn_q.bias"] == Q.F32
    assert types["blk.0.ffn_down.weight"] == Q.F16  # rows of 152 values: 152 % 32 != 0
    assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == wanted
    assert types["output.weight"] == (Q.Q8_0 if bits < 8 else wanted)
    back = ft_models.from_pretrained(path).state_dict()
    src = model.state_dict()
    for key in ("model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"):
        error = (back[key] - src[key]).abs().numpy()
        assert (error <= _block_bound(src[key].numpy(), bits)).all(), key
        if bits == 4:  # wrong variant: the 8-bit bound does not hold for 4-bit codes
            assert not (error <= _block_bound(src[key].numpy(), 8)).all()


@pytest.mark.parametrize("tensor_type", ["f16", "bf16"])
@torch.no_grad()
def test_half_precision_export_rounds_like_torch(tensor_type: str, tmp_path: Path) -> None:
    model = _ft_model({**shape("gqa7"), "model_type": "llama"}, tmp_path / "hf", seed=2)
    path = ft_models.save_gguf(model, tmp_path / "m.gguf", tensor_type=tensor_type)
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[tensor_type]
    back = ft_models.from_pretrained(path).state_dict()
    for key, value in model.state_dict().items():
        expected = value if value.dim() == 1 else value.to(dtype).float()
        assert torch.equal(back[key], expected), key
    info = gguf.GGUFReader(path)
    assert int(info.fields["general.file_type"].contents()) == {"f16": 1, "bf16": 32}[tensor_type]


def _refused(model: CausalLM, path: Path, message: str, **kwargs: Any) -> None:
    where = path.parent if path.parent.is_dir() else path.parent.parent
    before = sorted(p.name for p in where.iterdir())
    with pytest.raises(CheckpointError) as err:
        ft_models.save_gguf(model, path, **kwargs)
    assert "\n" not in str(err.value)
    assert message in str(err.value)
    assert sorted(p.name for p in where.iterdir()) == before  # nothing written, no temp file left


@torch.no_grad()
def test_settings_llama_cpp_cannot_run_are_refused(tmp_path: Path) -> None:
    def model_of(config: dict[str, Any], name: str) -> CausalLM:
        return _ft_model(config, tmp_path / name, seed=0)

    out = tmp_path / "out"
    out.mkdir()
    mistral = model_of({**shape("gqa4"), "model_type": "mistral", "sliding_window": 16}, "mistral")
    _refused(mistral, out / "m.gguf", "sliding_window is 16; llama.cpp's llama attends to the whole context")
    gemma = {**ROUND_TRIP["gemma2-gqa7"]}
    _refused(model_of({**gemma, "tie_word_embeddings": False}, "g1"), out / "m.gguf", "tie_word_embeddings")
    _refused(model_of({**gemma, "query_pre_attn_scalar": 20}, "g2"), out / "m.gguf", "query_pre_attn_scalar")
    qwen = model_of({**shape("gqa4"), "model_type": "qwen2", "rope_scaling": LLAMA3_ROPE}, "qwen")
    _refused(qwen, out / "m.gguf", "rope_scaling type 'llama3'")
    llama = model_of({**shape("gqa4"), "model_type": "llama"}, "llama")
    _refused(llama, out / "m.gguf", "tensor type 'q3_k' is not supported", tensor_type="q3_k")
    _refused(llama, out / "m.gguf", "metadata key 'llama.block_count'", metadata={"llama.block_count": 2})
    _refused(llama, out / "m.gguf", "metadata key tokenizer.x", metadata={"tokenizer.x": {"a": 1}})
    _refused(llama, out / "missing" / "m.gguf", "does not exist")
    (out / "m.gguf").write_bytes(b"keep")
    _refused(llama, out / "m.gguf", "already exists")
    assert (out / "m.gguf").read_bytes() == b"keep"
    ft_models.save_gguf(llama, out / "m.gguf", overwrite=True)
    assert ft_models.checkpoint_format(out / "m.gguf") == "gguf"


@torch.no_grad()
def test_metadata_values_carry_llama_cpp_types(tmp_path: Path) -> None:
    """Counts are uint32, reals float32, int lists int32 (as the converter writes token types); given
    tokenizer ids replace the config's."""
    model = _ft_model({**shape("gqa4"), "model_type": "llama", "bos_token_id": 1}, tmp_path / "hf", seed=0)
    meta = {
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(97)],
        "tokenizer.ggml.token_type": [1] * 97,
        "tokenizer.ggml.scores": [0.5] * 97,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.eos_token_id": 7,
        "general.name": "tiny",
    }
    path = ft_models.save_gguf(model, tmp_path / "m.gguf", metadata=meta)
    fields = gguf.GGUFReader(path).fields
    vt = gguf.GGUFValueType

    def kind(key: str) -> list[Any]:
        return list(fields[key].types)

    assert kind("llama.attention.head_count") == [vt.UINT32]
    assert kind("llama.attention.layer_norm_rms_epsilon") == [vt.FLOAT32]
    assert kind("llama.rope.freq_base") == [vt.FLOAT32]
    assert kind("tokenizer.ggml.token_type") == [vt.ARRAY, vt.INT32]
    assert kind("tokenizer.ggml.scores") == [vt.ARRAY, vt.FLOAT32]
    assert kind("tokenizer.ggml.tokens") == [vt.ARRAY, vt.STRING]
    assert kind("tokenizer.ggml.add_bos_token") == [vt.BOOL]
    assert int(fields["tokenizer.ggml.eos_token_id"].contents()) == 7
    assert "tokenizer.ggml.bos_token_id" not in fields  # the tokenizer's ids win over the config's
    assert fields["general.name"].contents() == "tiny"
