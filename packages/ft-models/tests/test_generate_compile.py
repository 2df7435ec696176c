"""The static-shape decode step under ``torch.compile``: captured once, never recompiled.

Two prompt lengths x 20 decode steps run with ``torch._dynamo.config.error_on_recompile = True``: the
cache capacity is the same power-of-two bucket for both (``_bucket(len + 20) == 32``) and the slot is a
tensor, so any recompilation (per step, per prompt length) raises. The compiled tokens must equal the
eager ones and transformers'.
"""

from __future__ import annotations

import pytest
import torch
from generate_support import assert_diverse, ft_rows, hf_new_tokens, make_pair, ragged_prompts

import ft_models

STEPS = 20


@pytest.mark.slow
def test_compiled_decode_step_is_captured_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    hf, model = make_pair("mistral", tmp_path_factory.mktemp("compile"))  # sliding window 6 < 20
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    prompts = [ragged_prompts(131, (5, 9, 7)), ragged_prompts(131, (9, 4, 8), seed=2)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for rows in prompts:
            new, lengths = ft_models.generate(model, rows, STEPS, compile=True)
            assert lengths.tolist() == [STEPS] * 3
            assert_diverse(new)
            eager, _ = ft_models.generate(model, rows, STEPS)
            assert torch.equal(new, eager)
            assert ft_rows(new, lengths) == hf_new_tokens(hf, rows, STEPS, do_sample=False)
    assert counts["stats"]["unique_graphs"] == 1
    # Wrong variant: a capacity outside the bucket (another shape) must trigger the recompile error.
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="ecompil"):
        ft_models.generate(model, ragged_prompts(131, (40, 3, 3)), STEPS, compile=True)
