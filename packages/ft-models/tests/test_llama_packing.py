"""Packed rows: with ``document_ids`` each document's logits equal the document run alone.

References: ft on each document alone and transformers on each document alone (fp32, eager).
"""

from __future__ import annotations

import pytest
import torch
from llama_support import LLAMA3_ROPE, make_hf
from transformers import LlamaForCausalLM

import ft_models
from ft_models import CausalLM, EagerKernel, SDPAKernel

# Row 0: documents of 5, 9 and 20 tokens then 3 pads; row 1: 12 + 19 tokens then 6 pads.
LAYOUT = [[5, 9, 20, -3], [12, 19, -6]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LlamaForCausalLM, CausalLM]:
    hf = make_hf("gqa4", tie=True, rope_scaling=LLAMA3_ROPE, seed=21)
    directory = tmp_path_factory.mktemp("pack")
    hf.save_pretrained(directory)
    return hf, ft_models.from_pretrained(directory)


def packed_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[slice]]]:
    """``input_ids``, ``document_ids``, per-document ``position_ids`` and each document's slice."""
    g = torch.Generator().manual_seed(2)
    width = sum(abs(n) for n in LAYOUT[0])
    ids = torch.randint(3, vocab, (len(LAYOUT), width), generator=g)
    docs = torch.empty(len(LAYOUT), width, dtype=torch.long)
    pos = torch.empty(len(LAYOUT), width, dtype=torch.long)
    spans: list[list[slice]] = []
    for r, row in enumerate(LAYOUT):
        start, spans_r = 0, []
        for d, n in enumerate(row):
            sl = slice(start, start + abs(n))
            docs[r, sl] = d if n > 0 else -1
            pos[r, sl] = torch.arange(abs(n))
            if n > 0:
                spans_r.append(sl)
            start += abs(n)
        spans.append(spans_r)
    return ids, docs, pos, spans


@pytest.mark.parametrize("kernel", [SDPAKernel, EagerKernel])
@torch.no_grad()
def test_each_packed_document_equals_the_document_alone(
    models: tuple[LlamaForCausalLM, CausalLM], kernel: type
) -> None:
    hf, model = models
    for layer in model.model.layers:
        layer.self_attn.kernel = kernel()
    ids, docs, pos, spans = packed_batch(hf.config.vocab_size)
    packed = model(ids, document_ids=docs)  # positions derived from document_ids
    explicit = model(ids, document_ids=docs, position_ids=pos)
    leaky = model(ids, position_ids=pos)  # wrong variant: document mask ignored
    assert torch.isfinite(packed).all()  # pad queries included
    assert torch.equal(packed, explicit)
    leaked = []
    for r, row_spans in enumerate(spans):
        for sl in row_spans:
            alone = model(ids[r : r + 1, sl])[0]
            reference = hf(ids[r : r + 1, sl]).logits[0]
            torch.testing.assert_close(packed[r, sl], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(packed[r, sl], reference, rtol=0, atol=1e-5)
            leaked.append(not torch.allclose(leaky[r, sl], reference, rtol=0, atol=1e-5))
    assert leaked == [False, True, True, False, True]  # every document after the first one leaks


def test_positions_from_documents() -> None:
    docs = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, -1], [0, 0, 0, 0, 3, 3, 3, 3]])
    expected = torch.tensor([[0, 1, 0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1, 2, 3]])
    assert torch.equal(ft_models.positions_from_documents(docs), expected)
