"""SmolLM2-135M-Instruct's GGUF tokenizer (`tokenizer.ggml.pre = smollm`) against a `tokenizers`
reference built from the same vocabulary and merges with SmolLM2's real pre-tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from _reference import gguf_fields, smollm_reference

import ft_data
from ft_data._bpe import BytePairTokenizer
from ft_data._gguf import load_gguf, read_gguf_metadata
from ft_data._pretokenize import GPT2_LLAMA_CPP, PreTokenizer

CHAT = "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def fields(smollm_gguf: Path) -> dict[str, object]:
    return gguf_fields(smollm_gguf)


@pytest.fixture(scope="session")
def ref(fields):
    return smollm_reference(fields)


@pytest.fixture(scope="session")
def tok(smollm_gguf: Path) -> ft_data.Tokenizer:
    return ft_data.load_tokenizer(smollm_gguf)


def test_metadata_reader_matches_gguf_package(smollm_gguf: Path, fields) -> None:
    ours = read_gguf_metadata(smollm_gguf, prefix="tokenizer.")
    assert ours.keys() == fields.keys()
    for key, value in fields.items():
        assert ours[key] == (list(value) if isinstance(value, list) else value), key


def test_corpus_ids_match_reference(tok, ref, fields, corpus: str) -> None:
    expected = ref.encode(corpus, add_special_tokens=False).ids
    ids = tok.encode(corpus)
    assert ids == expected
    assert tok.decode(ids) == ref.decode(expected, skip_special_tokens=False) == corpus
    # Wrong variant: the GPT-2 split without isolated digits gives other ids on this text.
    no_digit_split = smollm_reference(fields, digits=False)
    assert no_digit_split.encode(corpus, add_special_tokens=False).ids != ids


def test_unfused_pipeline_matches(smollm_gguf: Path, ref, corpus: str) -> None:
    unfused = load_gguf(smollm_gguf, fuse=False)
    text = corpus[-300_000:]  # Python docs and sources, mpmath docs: digit runs
    assert unfused._stages, "the unfused tokenizer must run the digit stage in Python"
    expected = ref.encode(text, add_special_tokens=False).ids
    assert unfused.encode(text) == expected
    # Wrong variant: the same pipeline without its digit stage.
    no_digits = BytePairTokenizer(
        name="no-digits", ranks=unfused.ranks, id_to_bytes=unfused.id_to_bytes,
        pre=PreTokenizer((GPT2_LLAMA_CPP,)), drop_from=unfused._drop_from,
    )  # fmt: skip
    assert no_digits.encode(text) != expected


def test_strings_built_from_vocabulary(tok, ref, fields) -> None:
    tokens = [
        t for t, ty in zip(fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]) if ty == 1
    ]
    texts = [ref.decode([ref.token_to_id(t)]) for t in tokens]
    rng = random.Random(0)
    rng.shuffle(texts)
    for sep in ("", " ", "\n", "0"):
        text = sep.join(texts[:20_000])
        expected = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == expected, repr(sep)
        assert tok.decode(expected) == ref.decode(expected)
    # Wrong variant: with digits as separators, a reference without the digit split differs.
    assert smollm_reference(fields, digits=False).encode(text, add_special_tokens=False).ids != expected


def test_special_tokens(tok, ref) -> None:
    assert tok.special_tokens["<|im_start|>"] == 1
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    allowed = tok.encode(CHAT, allow_special=True)
    assert allowed == ref.encode(CHAT, add_special_tokens=False).ids
    assert allowed.count(1) == 2
    ref.encode_special_tokens = True
    try:
        as_text = ref.encode(CHAT, add_special_tokens=False).ids
    finally:
        ref.encode_special_tokens = False
    assert tok.encode(CHAT) == as_text
    # Wrong variant: special-token text matched by default would let data inject control tokens.
    assert tok.encode(CHAT) != allowed
    assert tok.encode("hi", add_bos=True, add_eos=True) == [1, *tok.encode("hi"), 2]
    assert tok.decode(allowed) == CHAT
