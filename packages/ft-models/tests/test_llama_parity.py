"""ft's Llama against transformers' (eager attention, fp32) on tiny checkpoints transformers wrote.

Shapes are awkward on purpose (odd vocabularies, GQA 4:1 and 7:1, head_dim != hidden / heads,
Llama-3 rope scaling with a 16-token original context and 40-token inputs, tied and untied heads).
Each comparison also runs a deliberately wrong variant and asserts that it fails the same tolerance.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from llama_support import LINEAR_ROPE, LLAMA3_ROPE, make_hf, padded_batch
from transformers import LlamaForCausalLM

import ft_models
from ft_models import CausalLM, EagerKernel, RopeConfig, SDPAKernel

ATOL = 1e-5

# (shape, tied, rope_scaling, theta, wrong rope): the wrong rope is what a loader that ignored or
# misread the rope settings would use.
CASES: dict[str, tuple[str, bool, dict[str, Any] | None, float, RopeConfig]] = {
    "gqa4-untied-llama3": ("gqa4", False, LLAMA3_ROPE, 10000.0, RopeConfig(theta=10000.0)),
    "gqa7-tied-llama3": ("gqa7", True, LLAMA3_ROPE, 10000.0, RopeConfig(theta=10000.0)),
    "gqa4-tied-linear": ("gqa4", True, LINEAR_ROPE, 10000.0, RopeConfig(theta=10000.0)),
    "gqa7-untied-default": ("gqa7", False, None, 500000.0, RopeConfig(theta=10000.0)),
}
KERNELS = {"sdpa": SDPAKernel, "eager": EagerKernel}


def not_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return not torch.allclose(a, b, rtol=0, atol=atol)


def with_rope(model: CausalLM, rope: RopeConfig) -> CausalLM:
    """The same weights under another rope configuration (the wrong variant)."""
    wrong = ft_models.build_llama(dataclasses.replace(model.config, rope=rope))
    wrong.load_state_dict(model.state_dict())
    return wrong.eval()


@pytest.fixture(scope="module", params=list(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LlamaForCausalLM, Path, RopeConfig]:
    shape, tie, scaling, theta, wrong = CASES[request.param]
    hf = make_hf(shape, tie=tie, rope_scaling=scaling, theta=theta, seed=len(request.param))
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return hf, directory, wrong


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_logits_match_transformers(case: tuple[LlamaForCausalLM, Path, RopeConfig], kernel: str) -> None:
    hf, directory, wrong_rope = case
    saved = json.loads((directory / "config.json").read_text())
    assert "rope_parameters" in saved  # transformers 5 writes its own schema; ft must read it
    model = ft_models.from_pretrained(directory, kernel=KERNELS[kernel]())
    assert model.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, hf.config.vocab_size, (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
        wrong = with_rope(model, wrong_rope)(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    assert not_close(wrong, expected)


def test_hidden_states_and_output_projection(case: tuple[LlamaForCausalLM, Path, RopeConfig]) -> None:
    hf, directory, _ = case
    model = ft_models.from_pretrained(directory)
    ids = torch.randint(0, hf.config.vocab_size, (2, 19))
    captured: list[torch.Tensor] = []
    model.model.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    with torch.no_grad():
        expected = hf(ids, output_hidden_states=True).hidden_states[-1]  # after the final norm
        hidden = model(ids, return_hidden=True)
        logits = model.output_projection(hidden)
    unnormed = captured[0]
    assert hidden.shape == (2, 19, hf.config.hidden_size)
    torch.testing.assert_close(hidden, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(logits, hf.lm_head(expected), rtol=0, atol=ATOL)
    assert not_close(unnormed, expected)  # the final norm is part of the contract


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_padded_batch_matches_transformers(
    case: tuple[LlamaForCausalLM, Path, RopeConfig], left: bool, kernel: str
) -> None:
    hf, directory, _ = case
    model = ft_models.from_pretrained(directory, kernel=KERNELS[kernel]())
    ids, mask, docs, positions = padded_batch([23, 9, 17], hf.config.vocab_size, left=left)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = model(ids, document_ids=docs)
        ignored = model(ids, position_ids=positions)  # padding not masked: pads leak into rows
    real = mask.bool()
    assert torch.isfinite(got).all()  # pad queries attend to themselves only: no NaN anywhere
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)
    if left:  # with right padding, causality alone already hides the pads
        assert not_close(ignored[real], expected[real])
