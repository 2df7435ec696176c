"""Sampling: reproducible with a seeded generator, top-k=1 is greedy, top-p / min-p keep exactly the
right tokens on constructed distributions and agree with transformers' warpers, the repetition
penalty matches transformers' greedy decoding with the same penalty, and seeded draws equal
transformers' sampled tokens (same filters, same random stream)."""

from __future__ import annotations

import pytest
import torch
from generate_support import assert_diverse, make_pair, ragged_prompts
from transformers import PreTrainedModel
from transformers.generation.logits_process import MinPLogitsWarper, TopPLogitsWarper

import ft_models
from ft_models import CausalLM, SamplingConfig
from ft_models._sampling import filter_min_p, filter_top_p

NEW = 16
SETTINGS = SamplingConfig(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, CausalLM]:
    return make_pair("llama", tmp_path_factory.mktemp("sampling"))


def sample(model: CausalLM, rows: list[torch.Tensor], seed: int, config: SamplingConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ft_models.generate(model, rows, NEW, sampling=config, generator=g)[0]


def test_seeded_sampling_is_reproducible(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = pair
    rows = ragged_prompts(131)
    a, b = sample(model, rows, 7, SETTINGS), sample(model, rows, 7, SETTINGS)
    assert torch.equal(a, b)
    assert_diverse(a)
    assert not torch.equal(sample(model, rows, 8, SETTINGS), a)  # another seed, other draws


def test_seeded_draws_equal_transformers(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = pair
    ids = torch.randint(3, 131, (2, 9), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(21)  # transformers draws from the default generator
    expected = hf.generate(
        input_ids=ids,
        max_new_tokens=NEW,
        do_sample=True,
        temperature=0.8,
        top_k=40,
        top_p=0.9,
        min_p=0.02,
        pad_token_id=0,
    )[:, 9:]
    g = torch.Generator().manual_seed(21)
    got, _ = ft_models.generate(model, ids, NEW, sampling=SETTINGS, generator=g)
    assert torch.equal(got, expected)
    # Wrong variant: the temperature left out changes the draws.
    g = torch.Generator().manual_seed(21)
    other = SamplingConfig(temperature=1.0, top_k=40, top_p=0.9, min_p=0.02)
    assert not torch.equal(ft_models.generate(model, ids, NEW, sampling=other, generator=g)[0], expected)


def test_top_k_1_is_greedy(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = pair
    rows = ragged_prompts(131)
    greedy, _ = ft_models.generate(model, rows, NEW)
    for seed in (0, 1):
        assert torch.equal(sample(model, rows, seed, SamplingConfig(temperature=1.5, top_k=1)), greedy)
    assert not torch.equal(sample(model, rows, 0, SamplingConfig(temperature=1.5, top_k=2)), greedy)


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def constructed(probs: list[float]) -> tuple[torch.Tensor, list[int]]:
    """Logits ``[1, v]`` for ``probs`` placed at shuffled token ids; returns them and the id order."""
    order = torch.randperm(len(probs), generator=torch.Generator().manual_seed(len(probs))).tolist()
    logits = torch.full((1, len(probs)), 0.0)
    for p, i in zip(probs, order, strict=True):
        logits[0, i] = torch.tensor(p).log()
    return logits, order


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits, ids = constructed([0.5, 0.2, 0.15, 0.1, 0.05])
    assert kept(filter_top_p(logits, 0.8)) == {ids[0], ids[1], ids[2]}  # 0.85 >= 0.8 with 3 tokens
    assert kept(filter_top_p(logits, 0.5)) == {ids[0]}
    assert kept(filter_top_p(logits, 0.96)) == set(ids)
    assert kept(filter_top_p(logits, 0.1)) == {ids[0]}  # at least one token
    # Wrong variant: keeping tokens only while the mass stays below p drops the crossing token.
    probs = logits.softmax(-1)[0]
    sorted_p, order = probs.sort(descending=True)
    naive = {int(order[i]) for i in range(len(order)) if sorted_p[: i + 1].sum() < 0.8}
    assert naive != kept(filter_top_p(logits, 0.8))
    random = torch.randn(4, 131, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.3, 0.75, 0.95):
        reference = TopPLogitsWarper(p)(torch.zeros(4, 1, dtype=torch.long), random)
        assert torch.equal(torch.isfinite(filter_top_p(random, p)), torch.isfinite(reference))


def test_min_p_keeps_tokens_relative_to_the_top() -> None:
    logits, ids = constructed([0.4, 0.3, 0.1, 0.07, 0.06, 0.04, 0.03])
    assert kept(filter_min_p(logits, 0.2)) == {ids[0], ids[1], ids[2]}  # threshold 0.2 * 0.4 = 0.08
    assert kept(filter_min_p(logits, 0.9)) == {ids[0]}
    assert kept(filter_min_p(logits, 0.05)) == set(ids)
    # Wrong variant: an absolute threshold (p >= min_p) keeps fewer.
    assert {i for i, p in zip(ids, [0.4, 0.3, 0.1, 0.07, 0.06, 0.04, 0.03], strict=True) if p >= 0.2} != kept(
        filter_min_p(logits, 0.2)
    )
    random = torch.randn(4, 131, generator=torch.Generator().manual_seed(1)) * 3
    for m in (0.01, 0.1, 0.5):
        reference = MinPLogitsWarper(m)(torch.zeros(4, 1, dtype=torch.long), random)
        assert torch.equal(torch.isfinite(filter_min_p(random, m)), torch.isfinite(reference))


def test_repetition_penalty_matches_transformers(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = pair
    ids = torch.randint(3, 131, (2, 6), generator=torch.Generator().manual_seed(9))
    expected = hf.generate(
        input_ids=ids, max_new_tokens=24, do_sample=False, repetition_penalty=1.8, pad_token_id=0
    )[:, 6:]
    config = SamplingConfig(do_sample=False, repetition_penalty=1.8)
    got, _ = ft_models.generate(model, ids, 24, sampling=config)
    assert torch.equal(got, expected)
    assert_diverse(got)
    assert not torch.equal(ft_models.generate(model, ids, 24)[0], expected)  # no penalty: other tokens
