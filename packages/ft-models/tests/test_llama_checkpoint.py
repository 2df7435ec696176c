"""Checkpoints: ft's saved directories load in transformers, round trips are bit-exact, bad input fails.

The reference for "loads as is" is ``transformers.AutoModelForCausalLM.from_pretrained`` on ft's output.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import pytest
import torch
from llama_support import LLAMA3_ROPE, make_hf, save_weights_only
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import ft_models
from ft_models import CheckpointError, ConfigError


@pytest.fixture(scope="module", params=["untied", "tied"])
def hf_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LlamaForCausalLM, Path]:
    tie = request.param == "tied"
    hf = make_hf("gqa7" if tie else "gqa4", tie=tie, rope_scaling=LLAMA3_ROPE, seed=3)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return hf, directory


def stored_keys(directory: Path) -> set[str]:
    keys: set[str] = set()
    for f in directory.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            keys |= set(h.keys())
    return keys


@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
def test_saved_directory_loads_in_transformers(
    hf_dir: tuple[LlamaForCausalLM, Path], shard: str | None, tmp_path: Path
) -> None:
    hf, directory = hf_dir
    model = ft_models.from_pretrained(directory)
    out = tmp_path / "saved"
    ft_models.save_pretrained(model, out, **({"max_shard_size": shard} if shard else {}))
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "rope_theta" in config
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert (out / "generation_config.json").is_file()
    shards = sorted(out.glob("*.safetensors"))
    if shard:
        assert len(shards) > 2
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {p.name for p in shards}
    else:
        assert [p.name for p in shards] == ["model.safetensors"]
    tied = hf.config.tie_word_embeddings
    assert ("lm_head.weight" in stored_keys(out)) is not tied  # tied weights are written once

    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) is tied
    ids = torch.randint(0, hf.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)

    # Wrong variant: the same weights with the rope scaling key dropped from config.json.
    config["rope_scaling"] = None
    (out / "config.json").write_text(json.dumps(config))
    wrong = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        assert not torch.allclose(wrong(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)


def test_state_dict_round_trip_is_bit_exact(hf_dir: tuple[LlamaForCausalLM, Path], tmp_path: Path) -> None:
    hf, directory = hf_dir
    reference = hf.state_dict()
    model = ft_models.from_pretrained(directory)
    ft_models.save_pretrained(model, tmp_path / "a", max_shard_size=30_000)
    again = ft_models.from_pretrained(tmp_path / "a").state_dict()
    assert again.keys() == reference.keys()
    assert all(torch.equal(again[k], reference[k]) for k in reference)
    # Wrong variant: a bf16 load is not bit-exact, and the comparison notices.
    lossy = ft_models.from_pretrained(directory, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in lossy.parameters())
    ft_models.save_pretrained(lossy, tmp_path / "b")
    back = ft_models.from_pretrained(tmp_path / "b", dtype=torch.float32).state_dict()
    assert not all(torch.equal(back[k], reference[k]) for k in reference)


def test_tied_checkpoint_with_stored_head_loads(tmp_path: Path) -> None:
    hf = make_hf("gqa4", tie=True, seed=5)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}  # lm_head.weight present although tied
    save_file(sd, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    model = ft_models.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)


def test_default_dtype_follows_config(tmp_path: Path) -> None:
    hf = make_hf("gqa4", tie=False, seed=6).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    assert {p.dtype for p in ft_models.from_pretrained(tmp_path).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ft_models.from_pretrained(tmp_path, dtype=torch.float32).parameters()} == {
        torch.float32
    }


def test_meta_build_allocates_nothing() -> None:
    config = ft_models.llama_config("llama3.1-8b")  # 32 GB of fp32 parameters if allocated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = ft_models.build_llama(config)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    n = sum(p.numel() for p in model.parameters())
    assert 7.9e9 < n < 8.1e9
    assert all(p.is_meta for p in model.parameters())
    assert grown_kib < 64 * 1024


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    hf = make_hf("gqa4", tie=False, seed=7)
    directory = tmp_path / "model"
    directory.mkdir()
    hf.config.save_pretrained(directory)
    save_weights_only(hf, directory)
    return directory


def rewrite(directory: Path, edit: str) -> None:
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if edit == "missing":
        del sd["model.layers.1.mlp.up_proj.weight"]
    elif edit == "unexpected":
        sd["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    elif edit == "shape":
        sd["model.norm.weight"] = torch.ones(3)
    save_file(sd, str(path))


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        ("missing", r"model\.safetensors.*missing keys model\.layers\.1\.mlp\.up_proj\.weight"),
        ("unexpected", r"model\.safetensors.*unexpected keys model\.layers\.1\.mlp\.extra\.weight"),
        ("shape", r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(3,\)"),
    ],
)
def test_bad_weights_are_named(small_dir: Path, edit: str, pattern: str) -> None:
    rewrite(small_dir, edit)
    with pytest.raises(CheckpointError, match=pattern):
        ft_models.from_pretrained(small_dir)


def test_missing_files_are_errors(small_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        ft_models.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"expected a model directory or a \.gguf"):
        ft_models.from_pretrained(small_dir / "config.json")
    (small_dir / "model.safetensors").rename(small_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        ft_models.from_pretrained(small_dir)
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}
    (small_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: shard named"):
        ft_models.from_pretrained(small_dir)
    (small_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        ft_models.from_pretrained(small_dir)


def test_unknown_rope_type_in_checkpoint(small_dir: Path) -> None:
    config = json.loads((small_dir / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (small_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config\.json: key 'rope_parameters\.rope_type' = 'yarn'"):
        ft_models.from_pretrained(small_dir)


# --- atomic, non-destructive saving ------------------------------------------------------------


def test_save_refuses_foreign_directories(small_dir: Path, tmp_path: Path) -> None:
    model = ft_models.from_pretrained(small_dir)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an ft model directory"):
        ft_models.save_pretrained(model, user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    ft_models.save_pretrained(model, user, overwrite=True)
    assert not (user / "notes.txt").exists()
    assert (user / "model.safetensors").is_file()


def test_save_replaces_earlier_ft_output_only(small_dir: Path, tmp_path: Path) -> None:
    model = ft_models.from_pretrained(small_dir)
    out = tmp_path / "out"
    ft_models.save_pretrained(model, out, max_shard_size=20_000)
    assert (out / "model.safetensors.index.json").is_file()
    ft_models.save_pretrained(model, out)  # earlier ft output: replaced, stale shards gone
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    (out / "tokenizer.json").write_text("{}")  # something the user added
    with pytest.raises(CheckpointError, match=r"files ft did not write \(tokenizer\.json\)"):
        ft_models.save_pretrained(model, out)
    assert (out / "tokenizer.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["model", "out"]  # no temporary directories left


def test_failed_save_leaves_nothing(tmp_path: Path) -> None:
    with torch.device("meta"):
        model = ft_models.build_llama(ft_models.llama_config("smollm2-135m"))
    with pytest.raises(CheckpointError, match="meta device"):
        ft_models.save_pretrained(model, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_extra_files_are_part_of_the_atomic_output(small_dir: Path, tmp_path: Path) -> None:
    model = ft_models.from_pretrained(small_dir)
    out = tmp_path / "out"
    template = tmp_path / "template.jinja"
    template.write_text("{{ messages }}")
    generation = json.dumps({"bos_token_id": 1, "eos_token_id": [2, 5], "do_sample": False})
    extras = {"tokenizer.json": "{}", "chat_template.jinja": template, "generation_config.json": generation}
    ft_models.save_pretrained(model, out, extra_files=extras)
    assert (out / "chat_template.jinja").read_text() == "{{ messages }}"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 5]
    ft_models.save_pretrained(model, out, extra_files={"tokenizer.json": "{}"})  # ft wrote them: replaceable
    assert not (out / "chat_template.jinja").exists()
    for bad in ("../escape.txt", "config.json", "model.safetensors"):
        with pytest.raises(CheckpointError, match="extra_files"):
            ft_models.save_pretrained(model, out, extra_files={bad: "x"})
    assert (out / "tokenizer.json").read_text() == "{}"
