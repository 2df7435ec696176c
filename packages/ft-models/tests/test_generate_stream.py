"""Streaming: the same tokens and text as the non-streaming call, delivered in pieces, and text
released only once decodable (no piece carries half of a multi-byte character)."""

from __future__ import annotations

import pytest
import torch
from generate_support import make_pair, ragged_prompts
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM, SamplingConfig, TextBuffer

NEW = 16
# A byte-level toy vocabulary: token i is byte i of this text, so characters span 1 to 4 tokens.
TEXT = "naïve café — 東京 ✓ 𝄞 ok"
BYTES = TEXT.encode()


def byte_decode(ids: list[int] | tuple[int, ...]) -> str:
    return bytes(BYTES[i % len(BYTES)] for i in ids).decode("utf-8", errors="replace")


def letters(ids: list[int] | tuple[int, ...]) -> str:
    return "".join(chr(ord("a") + i % 26) + ("é" if i % 5 == 0 else "") for i in ids)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, CausalLM]:
    return make_pair("llama", tmp_path_factory.mktemp("stream"))


def test_stream_equals_generate_in_pieces(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = pair
    rows = ragged_prompts(131)
    for options in ({}, {"sampling": SamplingConfig(top_k=20)}):
        gen = torch.Generator().manual_seed(3)
        new, lengths = ft_models.generate(
            model, rows, NEW, eos_token_id=int(rows[0][0]), generator=gen, **options
        )
        gen = torch.Generator().manual_seed(3)
        chunks = list(
            ft_models.generate_stream(
                model, rows, NEW, decode=letters, eos_token_id=int(rows[0][0]), generator=gen, **options
            )
        )
        for i in range(3):
            ids = [t for c in chunks for t in c.ids[i]]
            assert ids == new[i, : lengths[i]].tolist()
            pieces = [c.text[i] for c in chunks if c.text[i]]
            assert "".join(pieces) == letters(ids)
            assert len(pieces) >= 8  # in pieces, not at the end


def test_text_buffer_holds_incomplete_characters() -> None:
    ids = list(range(len(BYTES)))
    buffer = TextBuffer(byte_decode)
    pieces = [buffer.push([i]) for i in ids] + [buffer.flush()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "東" in pieces
    assert "𝄞" in pieces
    assert sum(1 for p in pieces if p) > 10
    # Wrong variant: releasing the decoded text at every token emits broken characters.
    naive, shown = [], 0
    for n in range(1, len(ids) + 1):
        text = byte_decode(ids[:n])
        naive.append(text[shown:])
        shown = len(text)
    assert any("\ufffd" in p for p in naive)
    assert "".join(naive) != TEXT


def test_streaming_byte_level_model_output(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = pair
    rows = ragged_prompts(131)
    new, _lengths = ft_models.generate(model, rows, NEW)
    chunks = list(ft_models.generate_stream(model, rows, NEW, decode=byte_decode))
    for i in range(3):
        assert "".join(c.text[i] for c in chunks) == byte_decode(new[i].tolist())
        held = [c.text[i] for c in chunks[:-1]]
        assert all(not p.endswith("\ufffd") for p in held)
