"""Beam search against transformers' ``generate``: num_beams 4, length_penalty 0.7 / 1.5, every
early_stopping mode, compared by the returned lengths (transformers' from its ``beam_indices``).

The stop ids are every third token of the tiny model's vocabulary (a model with several EOS ids, as
Llama 3 has), so hypotheses finish at many lengths. The test first searches transformers' outputs for
rows where ``True`` and ``False`` differ and rows where ``False`` and ``"never"`` differ, asserts that such
rows exist (so the modes are really distinguished), then requires ft to match on every row.
"""

from __future__ import annotations

import pytest
import torch
from generate_support import assert_diverse, ft_rows, make_pair, ragged_prompts
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM

NEW = 16
EOS = list(range(3, 131, 3))
MODES: tuple[bool | str, ...] = (True, False, "never")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedModel, CausalLM, list[torch.Tensor]]:
    hf, model = make_pair("llama", tmp_path_factory.mktemp("beam"))
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(3, 131, (int(n),), generator=g) for n in torch.randint(2, 12, (32,), generator=g)]
    return hf, model, rows


def hf_beam(
    hf: PreTrainedModel, rows: list[torch.Tensor], lp: float, mode: bool | str, eos: list[int] | None
) -> list[list[int]]:
    ids, docs = ft_models.left_pad(rows)
    out = hf.generate(
        input_ids=ids,
        attention_mask=(docs >= 0).long(),
        max_new_tokens=NEW,
        num_beams=4,
        do_sample=False,
        length_penalty=lp,
        early_stopping=mode,
        eos_token_id=eos,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    lengths = (out.beam_indices >= 0).sum(1).tolist()
    new = out.sequences[:, ids.shape[1] :]
    return [new[i, :n].tolist() for i, n in enumerate(lengths)]


def ft_beam(model: CausalLM, rows: list[torch.Tensor], lp: float, mode: bool | str, **kw: object) -> list:
    return ft_rows(
        *ft_models.generate(
            model, rows, NEW, num_beams=4, length_penalty=lp, early_stopping=mode, eos_token_id=EOS, **kw
        )
    )


@pytest.mark.parametrize("lp", [0.7, 1.5])
def test_beam_search_matches_transformers_in_every_mode(
    setup: tuple[PreTrainedModel, CausalLM, list[torch.Tensor]], lp: float
) -> None:
    hf, model, rows = setup
    expected = {mode: hf_beam(hf, rows, lp, mode, EOS) for mode in MODES}
    lens = {mode: [len(r) for r in expected[mode]] for mode in MODES}
    assert min(lens[True]) < NEW  # the stop ids are really emitted
    true_vs_false = [i for i in range(len(rows)) if expected[True][i] != expected[False][i]]
    false_vs_never = [i for i in range(len(rows)) if expected[False][i] != expected["never"][i]]
    assert true_vs_false, "no row where early_stopping=True and False differ"
    if lp == 1.5:
        assert false_vs_never, "no row where early_stopping=False and 'never' differ"
        assert any(lens[False][i] != lens["never"][i] for i in false_vs_never)
    for mode in MODES:
        assert ft_beam(model, rows, lp, mode) == expected[mode], mode
    # Wrong variant: the same search without length normalisation picks other hypotheses.
    assert ft_beam(model, rows, 0.0, False) != expected[False]


def test_beam_search_without_stop_ids(setup: tuple[PreTrainedModel, CausalLM, list[torch.Tensor]]) -> None:
    hf, model, rows = setup
    rows = ragged_prompts(131)
    expected = hf_beam(hf, rows, 1.0, False, None)
    new, lengths = ft_models.generate(model, rows, NEW, num_beams=4)
    assert lengths.tolist() == [NEW] * 3
    assert_diverse(new)
    assert ft_rows(new, lengths) == expected
    greedy, _ = ft_models.generate(model, rows, NEW)
    assert not torch.equal(greedy, new)  # the search found other sequences than greedy
