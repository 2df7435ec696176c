"""Mistral's SentencePiece BPE models (byte fallback) against mistral-common's tokenizer, their
`save_pretrained` output against AutoTokenizer, and a Unigram model trained here with
SentencePiece on real text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import ft_data
from ft_data._hf_lib import HFLibraryTokenizer
from ft_data._spm import SentencePieceTokenizer

MODELS = [
    "tokenizer.model.v1",
    "mistral_instruct_tokenizer_240216.model.v2",
    "mistral_instruct_tokenizer_240323.model.v3",
    "mistral_instruct_tokenizer_241114.model.v7",
]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, mistral_data: Path):
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer as Reference

    path = mistral_data / request.param
    return ft_data.load_tokenizer(path), Reference(str(path)), path


def test_corpus_ids_match_mistral_common(pair, corpus: str) -> None:
    tok, ref, _ = pair
    assert isinstance(tok, SentencePieceTokenizer)
    text = corpus[:400_000]
    expected = ref.encode(text, bos=False, eos=False)
    assert tok.encode(text) == expected
    assert tok.decode(expected) == ref.decode(expected) == text
    assert tok.encode(text, add_bos=True, add_eos=True) == ref.encode(text, bos=True, eos=True)
    assert (tok.bos_id, tok.eos_id) == (ref.bos_id, ref.eos_id)
    # Wrong variant: the same model without SentencePiece's dummy prefix.
    assert _without_dummy_prefix(tok).encode(text) != expected


def _without_dummy_prefix(tok: SentencePieceTokenizer) -> SentencePieceTokenizer:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok.model_proto)
    proto.normalizer_spec.add_dummy_prefix = False
    return SentencePieceTokenizer("wrong", proto.SerializeToString())


def test_strings_built_from_vocabulary(pair) -> None:
    tok, ref, _ = pair
    sp = ref._model  # the reference's SentencePieceProcessor
    texts = [
        sp.id_to_piece(i).replace("\u2581", " ")
        for i in range(sp.get_piece_size())
        if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))
    ]
    random.Random(2).shuffle(texts)
    for sep in ("", " ", "\n"):
        text = sep.join(texts[:20_000])
        expected = ref.encode(text, bos=False, eos=False)
        assert tok.encode(text) == expected, repr(sep)
        assert tok.decode(expected) == ref.decode(expected)
    # Wrong variant: the same model without SentencePiece's dummy prefix.
    assert _without_dummy_prefix(tok).encode(text) != expected


def test_special_tokens(pair) -> None:
    tok, ref, _ = pair
    names = [n for n in ("<s>", "</s>", "[INST]", "[/INST]") if n in tok.special_tokens]
    text = " ".join(names) + " hello"
    assert tok.encode(text) == ref.encode(text, bos=False, eos=False)  # control text stays text
    allowed = tok.encode(text, allow_special=True)
    assert [i for i in allowed if i in tok.special_tokens.values()] == [tok.special_tokens[n] for n in names]
    # Wrong variant: matching control text by default would differ from the reference.
    assert allowed != ref.encode(text, bos=False, eos=False)
    assert tok.decode(allowed).replace(" ", "") == text.replace(" ", "")


def test_save_pretrained_auto_tokenizer(pair, corpus: str, tmp_path: Path) -> None:
    tok, _, _ = pair
    tok.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = corpus[:100_000]
    ids = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False) == ids
    assert hf.decode(ids) == text
    # The saved directory loads back in ft through the `tokenizers` library (not byte-level BPE).
    again = ft_data.load_tokenizer(tmp_path)
    assert isinstance(again, HFLibraryTokenizer)
    assert again.encode(text) == ids
    assert (again.bos_id, again.eos_id) == (tok.bos_id, tok.eos_id)
    assert tok.special_tokens.items() <= again.special_tokens.items()  # plus <unk>, special in HF files
    control = "[INST] hi [/INST]" if "[INST]" in tok.special_tokens else "<s> hi </s>"
    assert again.encode(control) == tok.encode(control)
    assert again.encode(control, allow_special=True) == hf.encode(control, add_special_tokens=False)
    assert again.encode(control, allow_special=True) != again.encode(control)
    # Wrong variant: the same file without SentencePiece's dummy prefix gives other ids.
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["normalizer"]["normalizers"] = data["normalizer"]["normalizers"][1:]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert AutoTokenizer.from_pretrained(tmp_path).encode(text, add_special_tokens=False) != ids


def test_unigram_model(corpus: str, tmp_path: Path) -> None:
    prefix = tmp_path / "uni"
    import sentencepiece as spm  # test group only; imported here so `-m slow` collects without it

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[:300_000].splitlines()),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=2003,
        character_coverage=0.98,
        byte_fallback=True,
        minloglevel=2,
    )
    path = prefix.with_suffix(".model")
    tok = ft_data.load_tokenizer(path)
    ref = spm.SentencePieceProcessor(model_file=str(path))
    text = corpus[300_000:500_000]
    assert tok.encode(text) == ref.encode(text)
    assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text))
    assert tok.vocab_size == 2003
    assert _without_dummy_prefix(tok).encode(text) != ref.encode(text)
