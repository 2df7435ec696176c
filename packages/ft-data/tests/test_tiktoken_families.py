"""Llama 3 / Llama 4 tiktoken files (reference: `llama-models`' Tokenizer classes) and Mistral's
Tekken files (reference: `mistral-common`'s Tekkenizer), on real text and vocabulary strings."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import tiktoken

import ft_data
from ft_data._pretokenize import GPT2

CASES = ["llama3", "llama4", "tekken_240911", "tekken_240718"]


def _chunks(text: str, size: int = 100_000) -> list[str]:
    """Split at newlines into pieces under `size` chars: the llama-models class itself cuts
    inputs longer than 400k chars, so the reference is called on pieces it keeps whole."""
    out, start = [], 0
    while start < len(text):
        end = text.rfind("\n", start, start + size) + 1 if start + size < len(text) else len(text)
        out.append(text[start:end])
        start = end
    return out


class _Ref:
    """Uniform view of the reference classes: encode without BOS/EOS, decode, special ids."""

    def __init__(self, name: str, llama_models_dir: Path, mistral_data: Path) -> None:
        if name.startswith("llama"):
            if name == "llama3":
                from llama_models.llama3.tokenizer import Tokenizer
            else:
                from llama_models.llama4.tokenizer import Tokenizer  # type: ignore[assignment]
            self.path = llama_models_dir / name / "tokenizer.model"
            self.impl = Tokenizer(self.path)
            self.special = dict(self.impl.special_tokens)
            self.bos, self.eos = self.impl.bos_id, self.impl.eos_id
            self.encode = lambda s: self.impl.encode(s, bos=False, eos=False)
            self.encode_special = lambda s: self.impl.encode(s, bos=False, eos=False, allowed_special="all")
            self.decode = self.impl.decode
            self.pattern = self.impl.model._pat_str
            self.ranks = self.impl.model._mergeable_ranks
            self.offset = 0
        else:
            from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
            from mistral_common.tokens.tokenizers.tekken import Tekkenizer

            self.path = mistral_data / f"{name}.json"
            self.impl = Tekkenizer.from_file(self.path)
            self.special = {t["token_str"]: t["rank"] for t in self.impl._all_special_tokens}
            self.bos, self.eos = self.impl.bos_id, self.impl.eos_id
            self.encode = lambda s: self.impl.encode(s, bos=False, eos=False)
            self.encode_special = None
            self.decode = lambda ids: self.impl.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)
            self.pattern = self.impl._model._pat_str
            self.ranks = self.impl._model._mergeable_ranks
            self.offset = self.impl.num_special_tokens


@pytest.fixture(scope="module", params=CASES)
def pair(request, llama_models_dir: Path, mistral_data: Path):
    ref = _Ref(request.param, llama_models_dir, mistral_data)
    return ft_data.load_tokenizer(ref.path), ref


def test_corpus_ids_match_reference(pair, corpus: str) -> None:
    tok, ref = pair
    ids: list[int] = []
    expected: list[int] = []
    for chunk in _chunks(corpus):
        ids += tok.encode(chunk)
        expected += ref.encode(chunk)
    assert ids == expected
    assert tok.decode(ids) == ref.decode(expected) == corpus
    # One call on the whole text gives the same ids (no chunking needed in ft).
    assert tok.encode(corpus) == ids
    # Wrong variant: the same ranks with the GPT-2 split instead of the family's regex.
    wrong = tiktoken.Encoding("wrong", pat_str=GPT2, mergeable_ranks=ref.ranks, special_tokens={})
    assert [i + ref.offset for i in wrong.encode_ordinary(corpus[:200_000])] != tok.encode(corpus[:200_000])


def test_strings_built_from_vocabulary(pair) -> None:
    tok, ref = pair
    texts = []
    for raw in ref.ranks:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    rng = random.Random(1)
    rng.shuffle(texts)
    for sep in ("", " ", "\n"):
        text = sep.join(texts[:20_000])
        expected = [x for c in _chunks(text, 20_000) for x in ref.encode(c)]
        assert [x for c in _chunks(text, 20_000) for x in tok.encode(c)] == expected, repr(sep)
    # Wrong variant: the GPT-2 split on the same strings.
    wrong = tiktoken.Encoding("wrong", pat_str=GPT2, mergeable_ranks=ref.ranks, special_tokens={})
    assert [i + ref.offset for i in wrong.encode_ordinary(text)] != tok.encode(text)


def test_special_tokens(pair) -> None:
    tok, ref = pair
    assert dict(tok.special_tokens) == ref.special
    assert (tok.bos_id, tok.eos_id) == (ref.bos, ref.eos)
    names = list(ref.special)[:12]
    text = "x".join(names) + " tail"
    plain = tok.encode(text)
    assert plain == ref.encode(text)  # special text encoded as ordinary text, as the references do
    assert not set(plain) & set(ref.special.values())
    allowed = tok.encode(text, allow_special=True)
    if ref.encode_special is not None:
        assert allowed == ref.encode_special(text)
    assert [i for i in allowed if i in ref.special.values()] == [ref.special[n] for n in names]
    # Wrong variant: matching special text by default differs from the reference.
    assert allowed != ref.encode(text)
    assert tok.encode("hi", add_bos=True, add_eos=True) == [ref.bos, *ref.encode("hi"), ref.eos]
    assert tok.decode(allowed) == text
