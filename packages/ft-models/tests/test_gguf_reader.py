"""ft's GGUF reader against transformers' own GGUF loader, on tiny llama.cpp-style files.

The tiny models have awkward shapes: odd vocabulary (331), ``head_dim`` (24) unrelated to
``hidden_size / n_heads`` (96 / 6), GQA 3:1, three layers, tied and untied output, and a mix of GGML
types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, F32).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf_support import MIXED_QUANT, write_llama_gguf
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import ft_models._gguf as gguf_module
from ft_models._gguf import SUPPORTED_GGUF_ARCHITECTURES, GGUFError, read_gguf
from ft_models.errors import FtModelsError

TINY = {
    "vocab_size": 331,
    "hidden_size": 96,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _tiny_state_dict(tied: bool, seed: int = 0, bias: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=tied, attention_bias=bias))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # norms leave 1.0 otherwise, which hides a wrong mapping
            else:
                p.normal_(0.0, 0.3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def _transformers_gguf(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and config transformers builds from the file with its own GGUF loader."""
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    sd = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return sd, model.config.to_dict()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_gguf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tied = request.param
    sd = _tiny_state_dict(tied)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_llama_gguf(path, sd, TINY, quant=MIXED_QUANT, metadata={"general.name": "tiny"})
    ref_sd, ref_config = _transformers_gguf(path)
    return {"path": path, "tied": tied, "ref_sd": ref_sd, "ref_config": ref_config}


def test_tensors_equal_transformers_gguf_loader(tiny_gguf: dict[str, Any]) -> None:
    ckpt = read_gguf(tiny_gguf["path"])
    ref = tiny_gguf["ref_sd"]
    assert set(ckpt.tensors) == set(ref)
    assert ("lm_head.weight" in ckpt.tensors) is not tiny_gguf["tied"]
    for name, tensor in ckpt.tensors.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, ref[name], rtol=0, atol=0, msg=name)


def test_without_unpermute_q_and_k_differ(tiny_gguf: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_module, "_rotary_destination_rows", lambda n_rows, n_heads: np.arange(n_rows))
    ckpt = read_gguf(tiny_gguf["path"])
    ref = tiny_gguf["ref_sd"]
    for name, tensor in ckpt.tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            assert not torch.allclose(tensor, ref[name], atol=1e-3), name
        else:
            assert torch.equal(tensor, ref[name]), name


def test_config_equals_transformers_gguf_config(tiny_gguf: dict[str, Any]) -> None:
    config = read_gguf(tiny_gguf["path"], load_tensors=False).config
    ref = tiny_gguf["ref_config"]
    assert config["model_type"] == ref["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
    ):
        assert config[key] == ref[key], key
    assert config["rope_theta"] == ref["rope_parameters"]["rope_theta"]
    assert "rope_scaling" not in config
    assert config["tie_word_embeddings"] is tiny_gguf["tied"]
    assert config["attention_bias"] is ref["attention_bias"] is False


def test_f32_file_round_trips_the_original_weights_bit_exactly(tmp_path: Path) -> None:
    # With q/k/v biases, which llama.cpp permutes like the q/k weights (transformers' GGUF loader drops
    # them, so the original HF weights are the reference here).
    sd = _tiny_state_dict(tied=False, seed=1, bias=True)
    path = write_llama_gguf(tmp_path / "f32.gguf", sd, TINY)
    ckpt = read_gguf(path)
    assert ckpt.config["attention_bias"] is True
    assert set(ckpt.tensors) == set(sd)
    for name, tensor in sd.items():
        assert torch.equal(ckpt.tensors[name], tensor), name


def test_metadata_is_plain_python(tmp_path: Path) -> None:
    tokens = ["<unk>", "<s>", "</s>", "héllo", "▁wörld", *[f"t{i}" for i in range(326)]]
    path = write_llama_gguf(
        tmp_path / "m.gguf",
        _tiny_state_dict(tied=True),
        TINY,
        tokens=tokens,
        metadata={
            "tokenizer.chat_template": "{{ messages }}",
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.scores": [0.5, -1.25],
        },
    )
    meta = read_gguf(path, load_tensors=False).metadata
    assert meta["tokenizer.ggml.tokens"] == tokens
    assert meta["tokenizer.chat_template"] == "{{ messages }}"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.scores"] == [0.5, -1.25]
    assert meta["general.architecture"] == "llama"
    assert meta["llama.attention.head_count"] == 6
    assert type(meta["llama.attention.head_count"]) is int
    assert not any(key.startswith("GGUF.") for key in meta)


def _hf_inv_freq(rope_scaling: dict[str, Any] | None, theta: float, head_dim: int) -> torch.Tensor:
    """transformers' inverse RoPE frequencies for a Hub-style scaling dict."""
    params = {"rope_type": "default", "rope_theta": theta, **(rope_scaling or {})}
    cfg = LlamaConfig(**{**TINY, "head_dim": head_dim, "rope_parameters": params})
    if params["rope_type"] == "default":
        return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    inv_freq, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    return inv_freq.double()


@pytest.mark.parametrize(
    ("theta", "head_dim", "scaling"),
    [
        (10000.0, 24, {"factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original": 128}),
        (500000.0, 128, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original": 8192}),
        (500000.0, 64, {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original": 8192}),
    ],
    ids=["tiny-lo2", "llama3.1-8b", "llama3.2-1b"],
)
def test_llama3_scaling_recovered_from_rope_freqs(
    tmp_path: Path, theta: float, head_dim: int, scaling: dict[str, Any]
) -> None:
    # llama.cpp stores Llama 3.1 scaling as per-frequency divisors: unscaled / scaled inverse frequency.
    true = {
        "rope_type": "llama3",
        "factor": scaling["factor"],
        "low_freq_factor": scaling["low_freq_factor"],
        "high_freq_factor": scaling["high_freq_factor"],
        "original_max_position_embeddings": scaling["original"],
    }
    want = _hf_inv_freq(true, theta, head_dim)
    divisors = (_hf_inv_freq(None, theta, head_dim) / want).numpy()
    cfg = {
        **TINY,
        "head_dim": head_dim,
        "rope_theta": theta,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "r.gguf", sd, cfg, rope_freqs=divisors)
    config = read_gguf(path, load_tensors=False).config
    got = _hf_inv_freq(config["rope_scaling"], theta, head_dim)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert config["rope_scaling"]["factor"] == scaling["factor"]
    # Wrong variant: ignoring rope_freqs (plain RoPE) must fail the same tolerance.
    plain = _hf_inv_freq(None, theta, head_dim)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(plain, want, rtol=1e-6, atol=0)


def test_rope_freqs_that_are_not_llama3_are_refused(tmp_path: Path) -> None:
    divisors = np.linspace(1.0, 4.0, 12) ** 2  # smooth everywhere: no Llama 3 band structure
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "r.gguf", sd, TINY, rope_freqs=divisors)
    with pytest.raises(GGUFError, match=r"rope_freqs\.weight does not follow Llama 3"):
        read_gguf(path, load_tensors=False)


def test_linear_rope_scaling(tmp_path: Path) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    path = write_llama_gguf(tmp_path / "l.gguf", sd, TINY, metadata=meta)
    assert read_gguf(path, load_tensors=False).config["rope_scaling"] == {
        "rope_type": "linear",
        "factor": 4.0,
    }
    meta = {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}
    path = write_llama_gguf(tmp_path / "y.gguf", sd, TINY, metadata=meta)
    with pytest.raises(GGUFError, match=r"rope\.scaling\.type 'yarn' is not supported"):
        read_gguf(path, load_tensors=False)


# --- bad input -------------------------------------------------------------------------------------


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    return write_llama_gguf(tmp_path / "good.gguf", _tiny_state_dict(tied=True), TINY, quant=MIXED_QUANT)


def _one_line(exc: BaseException, path: Path) -> str:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_truncated_file(good_file: Path, tmp_path: Path) -> None:
    data = good_file.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError) as info:
            read_gguf(bad)
        _one_line(info.value, bad)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)))
    with pytest.raises(GGUFError) as info:
        read_gguf(bad)
    assert "not a readable GGUF file" in _one_line(info.value, bad)
    missing = tmp_path / "absent.gguf"
    with pytest.raises(GGUFError) as info:
        read_gguf(missing)
    _one_line(info.value, missing)


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "a.gguf", sd, TINY, architecture="rwkv6")
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    message = _one_line(info.value, path)
    assert "'rwkv6'" in message
    assert "supported: llama, qwen2, qwen3, gemma2" in message
    assert SUPPORTED_GGUF_ARCHITECTURES == ("llama", "qwen2", "qwen3", "gemma2")
    assert isinstance(info.value, FtModelsError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["llama.embedding_length", "llama.attention.layer_norm_rms_epsilon"])
def test_missing_metadata_key_is_named(tmp_path: Path, key: str) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "k.gguf", sd, TINY, omit_keys=[key])
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    assert f"missing metadata key {key}" in _one_line(info.value, path)


def test_optional_keys_take_llama_cpp_defaults(tmp_path: Path) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    cfg = {**TINY, "num_key_value_heads": TINY["num_attention_heads"], "head_dim": 96 // 6}
    omit = ["llama.attention.head_count_kv", "llama.attention.key_length", "llama.rope.dimension_count"]
    path = write_llama_gguf(tmp_path / "d.gguf", sd, cfg, omit_keys=[*omit, "llama.rope.freq_base"])
    config = read_gguf(path, load_tensors=False).config
    assert config["num_key_value_heads"] == 6
    assert config["head_dim"] == 96 // 6
    assert config["rope_theta"] == 10000.0


def test_partial_rotary_is_refused(tmp_path: Path) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "p.gguf", sd, TINY, metadata={"llama.rope.dimension_count": 16})
    with pytest.raises(GGUFError, match="partial rotary"):
        read_gguf(path, load_tensors=False)


def test_unknown_tensor_is_named(tmp_path: Path) -> None:
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    extra = {"blk.0.attn_qkv.weight": np.zeros((8, TINY["hidden_size"]), np.float32)}
    path = write_llama_gguf(tmp_path / "u.gguf", sd, TINY, extra_tensors=extra)
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    assert "unknown tensor blk.0.attn_qkv.weight" in _one_line(info.value, path)


def test_missing_gguf_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, good_file: Path) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(ImportError, match=r"ft-models\[gguf\]"):
        read_gguf(good_file)


def test_llama3_inverse_needs_two_band_frequencies(tmp_path: Path) -> None:
    # A step function (no smoothed band) does not determine the Llama 3 parameters.
    divisors = np.where(np.arange(12) < 6, 1.0, 8.0)
    sd = {"model.embed_tokens.weight": torch.zeros(TINY["vocab_size"], TINY["hidden_size"])}
    path = write_llama_gguf(tmp_path / "s.gguf", sd, TINY, rope_freqs=divisors)
    with pytest.raises(GGUFError, match="cannot be recovered"):
        read_gguf(path, load_tensors=False)
