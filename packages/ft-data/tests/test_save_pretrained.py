"""`save_pretrained` output loads in transformers' AutoTokenizer (and back in ft) with identical ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import ft_data

CHAT = "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n"


@pytest.fixture(scope="module", params=["smollm", "llama3", "tekken"])
def source(request, smollm_gguf: Path, llama_models_dir: Path, mistral_data: Path) -> Path:
    return {
        "smollm": smollm_gguf,
        "llama3": llama_models_dir / "llama3" / "tokenizer.model",
        "tekken": mistral_data / "tekken_240911.json",
    }[request.param]


@pytest.fixture(scope="module")
def saved(source: Path, tmp_path_factory) -> tuple[ft_data.Tokenizer, Path]:
    tok = ft_data.load_tokenizer(source)
    out = tmp_path_factory.mktemp("saved")
    tok.save_pretrained(out)
    return tok, out


def test_files_written(saved) -> None:
    tok, out = saved
    assert {p.name for p in out.iterdir()} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config.get("chat_template") == tok.chat_template
    assert config["eos_token"] == tok.decode([tok.eos_id])


def test_auto_tokenizer_gives_identical_ids(saved, corpus: str) -> None:
    tok, out = saved
    hf = AutoTokenizer.from_pretrained(out)
    text = corpus[:400_000]
    ids = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == tok.decode(ids) == text
    assert (hf.eos_token_id, hf.bos_token_id) == (tok.eos_id, tok.bos_id)
    specials = "".join(list(tok.special_tokens)[:5]) + " x"
    assert hf.encode(specials, add_special_tokens=False) == tok.encode(specials, allow_special=True)
    # Wrong variant: ft's default treats special text as text, transformers' default matches it.
    assert hf.encode(specials, add_special_tokens=False) != tok.encode(specials)


def test_auto_tokenizer_default_special_tokens(saved) -> None:
    tok, out = saved
    hf = AutoTokenizer.from_pretrained(out)
    add_bos = getattr(tok, "add_bos_default", False)
    assert hf.encode("hi") == tok.encode("hi", add_bos=add_bos)


def test_saved_files_load_back_in_ft(saved, corpus: str) -> None:
    tok, out = saved
    again = ft_data.load_tokenizer(out)
    text = corpus[:300_000]
    assert again.encode(text) == tok.encode(text)
    assert again.special_tokens == tok.special_tokens
    assert (again.bos_id, again.eos_id, again.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert again.chat_template == tok.chat_template


def test_chat_template_renders_in_transformers(smollm_gguf: Path, tmp_path: Path) -> None:
    tok = ft_data.load_tokenizer(smollm_gguf)
    tok.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = hf.apply_chat_template([{"role": "user", "content": "What is 12345 + 678?"}], tokenize=False)
    assert text.endswith(CHAT)
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text, allow_special=True)


def test_directory_saved_by_transformers_loads_in_ft(smollm_gguf: Path, tmp_path: Path, corpus: str) -> None:
    tok = ft_data.load_tokenizer(smollm_gguf)
    tok.save_pretrained(tmp_path / "ft")
    AutoTokenizer.from_pretrained(tmp_path / "ft").save_pretrained(tmp_path / "hf")
    again = ft_data.load_tokenizer(tmp_path / "hf")
    assert again.chat_template == tok.chat_template
    assert (again.bos_id, again.eos_id, again.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    text = corpus[:200_000]
    assert again.encode(text) == tok.encode(text)
