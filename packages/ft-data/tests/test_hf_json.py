"""Hugging Face `tokenizer.json` byte-level BPEs trained here with the `tokenizers` library on real
text, one per pre-tokenizer / normalizer configuration ft maps, compared with that object."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

import ft_data
from ft_data._bpe import BytePairTokenizer
from ft_data._hf import load_hf_json
from ft_data._pretokenize import LLAMA3

SPECIALS = ["<|begin|>", "<|end|>"]


def _config(name: str):
    """(normalizer, pre_tokenizer) of each trained configuration."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return {
        # Llama 3 / Qwen 2 style: NFC, one Split regex, ByteLevel without its own regex.
        "nfc_split": (
            normalizers.NFC(),
            pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"), byte_level]),
        ),
        # GPT-2 with a prefix space.
        "prefix_space": (None, pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)),
        # Digit runs kept together, then GPT-2.
        "digit_runs": (
            None,
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False),
                ]
            ),
        ),
        # A split regex that leaves gaps (text it does not match stays a piece), then GPT-2.
        "gaps": (
            normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]),
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(r"\p{L}+"), "isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            ),
        ),
    }[name]


@pytest.fixture(scope="module", params=["nfc_split", "prefix_space", "digit_runs", "gaps"])
def trained(request, corpus: str, tmp_path_factory) -> tuple[Tokenizer, Path, str]:
    norm, pre = _config(request.param)
    ref = Tokenizer(models.BPE())
    if norm is not None:
        ref.normalizer = norm
    ref.pre_tokenizer = pre
    ref.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3001,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS,
        show_progress=False,
    )
    ref.train_from_iterator(corpus[::3].splitlines(), trainer)
    ref.add_tokens([AddedToken("ft_added", lstrip=True, rstrip=True, normalized=False)])
    out = tmp_path_factory.mktemp(request.param)
    ref.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|begin|>", "eos_token": "<|end|>", "chat_template": "{{ messages }}"})
    )
    return ref, out, request.param


def test_corpus_ids_match_trained_tokenizer(trained, corpus: str) -> None:
    ref, out, name = trained
    tok = ft_data.load_tokenizer(out)
    assert isinstance(tok, BytePairTokenizer)
    expected = ref.encode(corpus, add_special_tokens=False).ids
    assert tok.encode(corpus) == expected
    assert tok.decode(expected) == ref.decode(expected)
    # Lossless where the reference is: no prefix space, no lowercasing (the corpus is already NFC).
    assert (tok.decode(expected) == corpus) == (name in ("nfc_split", "digit_runs"))
    part = corpus[:200_000]
    unfused = load_hf_json(out / "tokenizer.json", fuse=False)
    assert unfused.encode(part) == ref.encode(part, add_special_tokens=False).ids


def test_normalizer_applies(trained, corpus: str) -> None:
    ref, out, _ = trained
    text = unicodedata.normalize("NFD", corpus[:200_000])  # real text in decomposed form
    tok = ft_data.load_tokenizer(out)
    expected = ref.encode(text, add_special_tokens=False).ids
    assert tok.encode(text) == expected
    # Wrong variant: the same tokenizer without its normalizer (or with NFC where it has none).
    data = json.loads((out / "tokenizer.json").read_text())
    data["normalizer"] = None if data["normalizer"] else {"type": "NFC"}
    bare = out.parent / f"{out.name}-bare.json"
    bare.write_text(json.dumps(data))
    assert load_hf_json(bare).encode(text) != expected


def test_added_tokens(trained) -> None:
    ref, out, _ = trained
    tok = ft_data.load_tokenizer(out)
    text = "say  ft_added  then <|begin|>x<|end|> 2024"
    assert tok.encode(text, allow_special=True) == ref.encode(text, add_special_tokens=False).ids
    ref.encode_special_tokens = True
    try:
        plain = ref.encode(text, add_special_tokens=False).ids
    finally:
        ref.encode_special_tokens = False
    assert tok.encode(text) == plain
    assert tok.special_tokens == {s: ref.token_to_id(s) for s in SPECIALS}
    assert (tok.bos_id, tok.eos_id) == (ref.token_to_id("<|begin|>"), ref.token_to_id("<|end|>"))
    assert tok.chat_template == "{{ messages }}"
    # Wrong variant: special text matched without being allowed.
    assert tok.encode(text) != tok.encode(text, allow_special=True)
