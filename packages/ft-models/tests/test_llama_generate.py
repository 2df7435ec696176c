"""KV-cache decoding and greedy generation against full forwards and transformers' ``generate``.

Weights are re-initialised with std 0.3 (norms excluded) so greedy decoding wanders through the
vocabulary; every test asserts at least 8 distinct generated tokens per row.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from llama_support import LLAMA3_ROPE, hf_config, randomize
from transformers import LlamaForCausalLM

import ft_models
from ft_models import CacheError, CausalLM, RopeConfig

PROMPT_LENGTHS = [3, 11, 7]  # ragged: left-padded to 11
NEW = 16  # prompt + new tokens run past the 16-token original rope context


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaForCausalLM, CausalLM]:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_config("gqa7", tie=False, rope_scaling=LLAMA3_ROPE)).eval()
    randomize(hf, std=0.3, seed=11, norms=False)
    directory = tmp_path_factory.mktemp("gen")
    hf.save_pretrained(directory)
    return hf, ft_models.from_pretrained(directory)


def prompts(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (n,), generator=g) for n in PROMPT_LENGTHS]


def assert_diverse(rows: torch.Tensor) -> None:
    for row in rows:
        assert len(set(row.tolist())) >= 8, row


def decode_with_cache(
    model: CausalLM, rows: list[torch.Tensor], steps: int, *, capacity: int, break_mask: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy steps on a cache; returns tokens ``[b, steps]`` and the logits that chose them."""
    ids, docs = ft_models.left_pad(rows)
    cache = model.new_cache(len(rows), capacity)
    logits = model(ids, document_ids=docs, cache=cache)[:, -1]
    if break_mask:  # wrong variant: the key-valid mask ignored, pad slots become visible
        cache.valid[:, : cache.length] = True
    tokens, chosen = [], []
    for _ in range(steps):
        token = logits.argmax(-1)
        tokens.append(token)
        chosen.append(logits)
        logits = model(token[:, None], cache=cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(chosen, 1)


@pytest.mark.parametrize("capacity", [11 + NEW, 12], ids=["sized", "grows"])
@torch.no_grad()
def test_cache_decoding_matches_full_forward(
    models: tuple[LlamaForCausalLM, CausalLM], capacity: int
) -> None:
    hf, model = models
    rows = prompts(hf.config.vocab_size)
    tokens, logits = decode_with_cache(model, rows, NEW, capacity=capacity)
    assert_diverse(tokens)
    for i, prompt in enumerate(rows):
        full = torch.cat([prompt, tokens[i]])[None]  # the row alone, unpadded
        reference = model(full)[0, len(prompt) - 1 : -1]  # logits that predicted each new token
        torch.testing.assert_close(logits[i], reference, rtol=1e-5, atol=1e-4)
        assert torch.equal(reference.argmax(-1), tokens[i])
        hf_reference = hf(full).logits[0, len(prompt) - 1 : -1]
        torch.testing.assert_close(logits[i], hf_reference, rtol=1e-5, atol=1e-4)
    _, wrong = decode_with_cache(model, rows, NEW, capacity=capacity, break_mask=True)
    short = PROMPT_LENGTHS.index(min(PROMPT_LENGTHS))  # the most padded row sees the pads
    assert not torch.allclose(wrong[short], logits[short], rtol=1e-5, atol=1e-4)


@torch.no_grad()
def test_cache_grows_in_power_of_two_buckets(models: tuple[LlamaForCausalLM, CausalLM]) -> None:
    _, model = models
    cache = model.new_cache(2, 5)
    model(torch.randint(3, 100, (2, 6)), cache=cache)
    assert cache.capacity == 8
    model(torch.randint(3, 100, (2, 3)), cache=cache)
    assert cache.capacity == 16
    assert cache.length == 9
    assert cache.lengths.tolist() == [9, 9]
    with pytest.raises(CacheError, match="3 rows"):
        model(torch.randint(3, 100, (3, 1)), cache=cache)


@torch.no_grad()
def test_cache_reorder_follows_rows(models: tuple[LlamaForCausalLM, CausalLM]) -> None:
    hf, model = models
    rows = prompts(hf.config.vocab_size)
    ids, docs = ft_models.left_pad(rows)
    cache = model.new_cache(3, 20)
    first = model(ids, document_ids=docs, cache=cache)[:, -1].argmax(-1)
    order = torch.tensor([2, 0, 0])
    cache.reorder(order)
    after = model(first[order][:, None], cache=cache)[:, -1]
    for j, i in enumerate(order.tolist()):
        full = torch.cat([rows[i], first[i : i + 1]])[None]
        torch.testing.assert_close(after[j], model(full)[0, -1], rtol=1e-5, atol=1e-4)
    # Wrong variant: continuing without reordering gives row 0 the wrong history.
    cache2 = model.new_cache(3, 20)
    model(ids, document_ids=docs, cache=cache2)
    stale = model(first[order][:, None], cache=cache2)[:, -1]
    assert not torch.allclose(stale[0], after[0], rtol=1e-5, atol=1e-4)


def hf_generate(hf: LlamaForCausalLM, rows: list[torch.Tensor], n: int, eos: int | None) -> torch.Tensor:
    ids, docs = ft_models.left_pad(rows)
    out = hf.generate(
        input_ids=ids,
        attention_mask=(docs >= 0).long(),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[:, ids.shape[1] :]


def test_greedy_generate_matches_transformers(models: tuple[LlamaForCausalLM, CausalLM]) -> None:
    hf, model = models
    rows = prompts(hf.config.vocab_size)
    new, lengths = ft_models.generate(model, rows, NEW)
    assert new.shape == (3, NEW)
    assert lengths.tolist() == [NEW] * 3
    assert_diverse(new)
    expected = hf_generate(hf, rows, NEW, None)
    assert torch.equal(new, expected)
    # Wrong variant: the same weights with the Llama-3 rope scaling off generate other tokens.
    wrong = ft_models.build_llama(dataclasses.replace(model.config, rope=RopeConfig(theta=10000.0))).eval()
    wrong.load_state_dict(model.state_dict())
    assert not torch.equal(ft_models.generate(wrong, rows, NEW)[0], expected)


def test_generate_stops_rows_at_eos(models: tuple[LlamaForCausalLM, CausalLM]) -> None:
    hf, model = models
    rows = prompts(hf.config.vocab_size)
    free, _ = ft_models.generate(model, rows, NEW)
    eos = int(free[0, 4])  # row 0 produces this token at step 5
    new, lengths = ft_models.generate(model, rows, NEW, eos_token_id=eos)
    expected = hf_generate(hf, rows, NEW, eos)
    assert lengths[0] <= 5
    for i in range(3):
        n = int(lengths[i])
        assert torch.equal(new[i, :n], expected[i, :n])
        assert (new[i, n:] == 0).all()
        hit = (expected[i] == eos).nonzero()
        assert n == (int(hit[0]) + 1 if len(hit) else expected.shape[1])


def test_generate_accepts_a_batch_tensor(models: tuple[LlamaForCausalLM, CausalLM]) -> None:
    hf, model = models
    ids = torch.randint(3, hf.config.vocab_size, (2, 9))
    new, lengths = ft_models.generate(model, ids, 10)
    expected = hf.generate(input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=0)[:, 9:]
    assert torch.equal(new, expected)
    assert lengths.tolist() == [10, 10]
    assert_diverse(new)
