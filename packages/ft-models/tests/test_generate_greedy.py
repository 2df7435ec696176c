"""Greedy generation against transformers for every registered family; stop conditions; timing report.

Each family's tiny model (odd vocabulary 131, GQA 7:1, head_dim 12 != 56 / 7, sliding windows of 6
where the family has them) has std-0.3 weights, so greedy decoding wanders (>= 8 distinct tokens per
row asserted). ft decodes a ragged batch of three prompts with its static-shape decode step; the new
tokens must equal transformers' ``generate`` on the padded batch and on each prompt alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from generate_support import (
    assert_diverse,
    ft_rows,
    hf_new_tokens,
    make_pair,
    ragged_prompts,
    transformers_has,
)
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM, GenerationStats
from ft_models._registry import BUILDERS

FAMILIES = sorted(t for t in BUILDERS if transformers_has(t))
NEW = 16


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return make_pair(request.param, tmp_path_factory.mktemp(request.param))


def test_greedy_matches_transformers_ragged_and_alone(pair: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = pair
    rows = ragged_prompts(hf.config.vocab_size)
    new, lengths = ft_models.generate(model, rows, NEW)
    assert new.shape == (3, NEW)
    assert lengths.tolist() == [NEW] * 3
    assert_diverse(new)
    got = ft_rows(new, lengths)
    assert got == hf_new_tokens(hf, rows, NEW, do_sample=False)
    for i, row in enumerate(rows):
        assert got[i] == hf_new_tokens(hf, [row], NEW, do_sample=False)[0]
        alone, _ = ft_models.generate(model, [row], NEW)
        assert alone[0].tolist() == got[i]
    # Wrong variant: the same weights with another RoPE base generate other tokens.
    config = model.config
    wrong = ft_models.build_model(
        dataclasses.replace(config, rope=dataclasses.replace(config.rope, theta=77.0))
    )
    wrong.load_state_dict(model.state_dict())
    assert ft_rows(*ft_models.generate(wrong.eval(), rows, NEW)) != got


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, CausalLM]:
    return make_pair("llama", tmp_path_factory.mktemp("llama"))


def test_rows_stop_at_their_own_eos_like_transformers(llama: tuple[PreTrainedModel, CausalLM]) -> None:
    hf, model = llama
    rows = ragged_prompts(hf.config.vocab_size)
    free, _ = ft_models.generate(model, rows, NEW)
    eos = [int(free[0, 4]), int(free[2, 9])]  # tokens rows 0 and 2 emit
    new, lengths = ft_models.generate(model, rows, NEW, eos_token_id=eos)
    expected = hf_new_tokens(hf, rows, NEW, do_sample=False, eos_token_id=eos)
    assert ft_rows(new, lengths) == expected
    assert lengths[0] <= 5
    assert lengths[2] <= 10
    assert new.shape[1] == max(len(r) for r in expected)
    for i, n in enumerate(lengths.tolist()):
        assert (new[i, n:] == 0).all()
    # Extra stop ids act like EOS ids.
    new2, lengths2 = ft_models.generate(model, rows, NEW, eos_token_id=eos[0], stop_token_ids=[eos[1]])
    assert ft_rows(new2, lengths2) == expected
    # Wrong variant: without the stop ids the rows run to max_new_tokens.
    assert ft_rows(*ft_models.generate(model, rows, NEW)) != expected


def letters(ids: list[int] | tuple[int, ...]) -> str:
    """A toy decode: one letter per token (stands in for a tokenizer's decode)."""
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_end_rows_at_the_completing_token(llama: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = llama
    rows = ragged_prompts(131)
    free, _ = ft_models.generate(model, rows, NEW)
    text1 = letters(free[1].tolist())
    stop = text1[6:8]  # a two-letter string row 1 produces at tokens 6-7
    new, lengths = ft_models.generate(model, rows, NEW, stop_strings=[stop], decode=letters)
    for i in range(3):
        text = letters(free[i].tolist())
        end = text.find(stop)
        expected = end + len(stop) if end >= 0 else NEW  # the first token that completes the string
        assert int(lengths[i]) == expected
        assert new[i, :expected].tolist() == free[i, :expected].tolist()
    assert int(lengths[1]) <= 8
    with pytest.raises(ValueError, match="decode"):
        ft_models.generate(model, rows, NEW, stop_strings=[stop])


def test_stop_ids_read_from_checkpoint_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2, 9]}))
    assert ft_models.read_stop_token_ids(tmp_path) == [7, 2, 9]
    (tmp_path / "generation_config.json").unlink()
    assert ft_models.read_stop_token_ids(tmp_path) == [2]


def test_multi_turn_reuses_the_common_prefix(llama: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = llama
    rows = ragged_prompts(131, (5, 9))
    cache = model.new_cache(2, 8)
    first, lengths = ft_models.generate(model, rows, 6, cache=cache)
    user = ragged_prompts(131, (4, 2), seed=3)
    turn2 = [torch.cat([r, first[i, : lengths[i]], user[i]]) for i, r in enumerate(rows)]
    stats = GenerationStats()
    got = ft_models.generate(model, turn2, 10, cache=cache, stats=stats)
    fresh = ft_models.generate(model, turn2, 10)
    assert torch.equal(got[0], fresh[0])
    assert torch.equal(got[1], fresh[1])
    assert_diverse(got[0])
    # Everything but the last generated token (never fed) and the new user turn came from the cache.
    assert stats.prompt_tokens == sum(len(u) + 1 for u in user)
    assert cache.capacity & (cache.capacity - 1) == 0  # grown in power-of-two buckets
    assert cache.capacity >= cache.length
    # A template that rewrites an earlier turn: only the tokens after the first change are recomputed.
    rewritten = [t.clone() for t in turn2]
    rewritten[0][3] = (rewritten[0][3] + 1) % 131
    stats = GenerationStats()
    got = ft_models.generate(model, rewritten, 10, cache=cache, stats=stats)
    fresh = ft_models.generate(model, rewritten, 10)
    assert torch.equal(got[0], fresh[0])
    assert stats.prompt_tokens < sum(len(t) for t in rewritten)
    # Wrong variant: a cache whose token record hides the rewrite keeps stale keys and values.
    stale = model.new_cache(2, 8)
    ft_models.generate(model, turn2, 10, cache=stale)
    slots = stale.valid[0].nonzero().flatten()  # row 0's real tokens
    with torch.inference_mode():  # the cache's buffers were made inside generate's inference mode
        stale.token_ids[0, slots[3]] = rewritten[0][3]
    wrong = ft_models.generate(model, rewritten, 10, cache=stale)
    assert not torch.equal(wrong[0][0], fresh[0][0])


def test_timing_report(llama: tuple[PreTrainedModel, CausalLM]) -> None:
    _, model = llama
    stats = GenerationStats()
    _new, lengths = ft_models.generate(model, ragged_prompts(131), NEW, stats=stats)
    assert stats.prompt_tokens == 3 + 11 + 7
    assert stats.new_tokens == int(lengths.sum()) == 3 * NEW
    assert stats.prompt_tokens_per_s > 0
    assert stats.decode_tokens_per_s > 0
    assert stats.peak_memory_bytes > 2**20
    assert "decode 48 tok" in str(stats)
