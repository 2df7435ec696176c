"""Streaming decode and sampling of the generate recipe against transformers (tiny awkward model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import ft_models
from ft_recipes._decode import SamplingOptions, Session, TextStream, sample, warp


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaForCausalLM, torch.nn.Module]:
    """A transformers Llama (GQA 7:1, head_dim 12 != 56/7, vocab 131) and the same weights in ft."""
    cfg = LlamaConfig(
        vocab_size=131,
        hidden_size=56,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=7,
        num_key_value_heads=1,
        head_dim=12,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(path)
    ours = ft_models.from_pretrained(Path(path), dtype=torch.float32).eval()
    return hf, ours


def _reference(hf: LlamaForCausalLM, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


PROMPT = [5, 17, 99, 3, 64, 130, 41, 8, 77]
NO_STOP: set[int] = set()


def test_greedy_stream_matches_transformers(pair: tuple[LlamaForCausalLM, torch.nn.Module]) -> None:
    hf, ours = pair
    got = list(
        Session(ours, torch.device("cpu")).generate(PROMPT, 16, opts=SamplingOptions(), stop_ids=NO_STOP)
    )
    want = _reference(hf, PROMPT, 16)
    assert len(set(want)) >= 8  # a model that repeats one token would prove nothing
    assert got == want


def test_next_turn_reuses_the_cache_and_matches_a_fresh_run(
    pair: tuple[LlamaForCausalLM, torch.nn.Module],
) -> None:
    hf, ours = pair
    session = Session(ours, torch.device("cpu"))
    first = list(session.generate(PROMPT, 6, opts=SamplingOptions(), stop_ids=NO_STOP))
    second_prompt = [*PROMPT, *first, 11, 12, 13]
    second = list(session.generate(second_prompt, 12, opts=SamplingOptions(), stop_ids=NO_STOP))
    assert session.reused == len(PROMPT) + len(first) - 1  # the last sampled token was never fed
    want = _reference(hf, second_prompt, 12)
    assert len(set(want)) >= 8
    assert second == want
    # Wrong variant: a session that claims the prefix is cached while its cache is empty.
    broken = Session(ours, torch.device("cpu"))
    broken.cache = ours.new_cache(1, 64)
    broken.context = list(second_prompt[:-3])
    assert list(broken.generate(second_prompt, 12, opts=SamplingOptions(), stop_ids=NO_STOP)) != want


def test_a_history_that_changed_rebuilds_the_cache(pair: tuple[LlamaForCausalLM, torch.nn.Module]) -> None:
    hf, ours = pair
    session = Session(ours, torch.device("cpu"))
    list(session.generate(PROMPT, 4, opts=SamplingOptions(), stop_ids=NO_STOP))
    other = [6, *PROMPT[1:], 20, 21]
    got = list(session.generate(other, 10, opts=SamplingOptions(), stop_ids=NO_STOP))
    assert session.reused == 0
    assert got == _reference(hf, other, 10)


def test_stop_token_ends_the_stream(pair: tuple[LlamaForCausalLM, torch.nn.Module]) -> None:
    hf, ours = pair
    want = _reference(hf, PROMPT, 16)
    stop = want[5]
    got = list(
        Session(ours, torch.device("cpu")).generate(PROMPT, 16, opts=SamplingOptions(), stop_ids={stop})
    )
    assert got == want[: want.index(stop) + 1]


CASES = [
    (0.7, None, None),
    (1.3, 5, None),
    (1.0, None, 0.9),
    (0.8, 20, 0.5),
    (1.0, None, 0.3),
    (2.0, 50, 0.95),
]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), CASES)
def test_warp_matches_transformers_warpers(
    temperature: float, top_k: int | None, top_p: float | None
) -> None:
    g = torch.Generator().manual_seed(int(temperature * 100) + (top_k or 0))
    logits = torch.randn(4, 257, generator=g) * 3
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p is not None:
        ref = TopPLogitsWarper(top_p)(None, ref)
    for row in range(4):
        ours = warp(logits[row], SamplingOptions(temperature, top_k, top_p))
        assert torch.equal(torch.isfinite(ours), torch.isfinite(ref[row]))
        kept = torch.isfinite(ours)
        torch.testing.assert_close(ours[kept], ref[row][kept])


def test_wrong_top_p_rule_fails_the_same_comparison() -> None:
    # Dropping the token that crosses the threshold (cumulative >= p, without subtracting its own mass)
    # keeps one token too few; the comparison above must be able to see that.
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(257, generator=g) * 3
    ref = TopPLogitsWarper(0.9)(None, logits[None].clone())[0]
    sorted_scores, order = logits.sort(descending=True)
    wrong = logits.scatter(0, order[sorted_scores.softmax(-1).cumsum(-1) >= 0.9], float("-inf"))
    assert not torch.equal(torch.isfinite(wrong), torch.isfinite(ref))
    assert torch.equal(torch.isfinite(warp(logits, SamplingOptions(1.0, None, 0.9))), torch.isfinite(ref))


def _draws(logits: torch.Tensor, opts: SamplingOptions, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return [sample(logits, opts, gen) for _ in range(20)]


def test_sampling_is_seeded_and_top_k_one_is_greedy() -> None:
    logits = torch.randn(97, generator=torch.Generator().manual_seed(1))
    opts = SamplingOptions(1.0, None, None)
    assert _draws(logits, opts, 7) == _draws(logits, opts, 7)
    assert _draws(logits, opts, 7) != _draws(logits, opts, 8)
    assert len(set(_draws(logits, opts, 7))) > 1  # it does sample
    assert set(_draws(logits, SamplingOptions(1.5, 1, None), 0)) == {int(logits.argmax())}


def test_text_stream_holds_back_partial_characters() -> None:
    # A byte-level vocabulary: each id is one UTF-8 byte, so multi-byte characters span several ids.
    text = "héllo 😀 wörld"
    ids = list(text.encode())

    def decode(seq: list[int]) -> str:
        return bytes(seq).decode("utf-8", errors="replace")

    stream = TextStream(decode)
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces.count("") == len(ids) - len(text)  # one empty piece per continuation byte
