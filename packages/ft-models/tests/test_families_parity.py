"""Every family against transformers (eager attention, fp32), from one table: one row per family.

A row names the transformers class, tiny configs of awkward shapes (odd vocabularies 97 / 131, GQA 4:1
and 7:1, ``head_dim`` not ``hidden / heads``, tied and untied, windows of 5-7 tokens on 40-token inputs,
Llama-3 rope scaling with a 16-token original context), the attention kernels it runs under, its
structural checks, its deliberately wrong variants, the keys its saved ``config.json`` must hold and
one that breaks it, and its cached-decoding case. The shared checks (``family_support``) run for every
row: module paths and shapes, logits within 1e-5 under each kernel, left- and right-padded batches,
final hidden states and the chunked output projection, ft's saved directory reloaded by transformers,
cached decoding of a left-padded batch across the window, packed rows (documents longer and shorter than
the window, padding) against transformers on each document alone. Each wrong variant must miss the tolerance
by a margin (``family_support.MARGIN``). The rows and their wrong variants are listed in
``family_table.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from family_support import (
    check_cache_decoding,
    check_logits,
    check_packed,
    check_padded,
    check_saved_loads_in_transformers,
    ft_from_reference,
    make_reference,
    not_close,
)
from family_table import TABLE, Row
from transformers import PreTrainedModel

import ft_models
from ft_models import CausalLM

CASES = [(family, case) for family, row in TABLE.items() for case in row.cases]


def test_table_covers_every_registered_family() -> None:
    assert set(TABLE) == set(ft_models.FAMILIES)


@contextmanager
def _kernels_restored(model: CausalLM) -> Iterator[None]:
    """Put the builder's kernels back after a check that sets others (the model is shared by a module)."""
    before = [layer.self_attn.kernel for layer in model.model.layers]
    try:
        yield
    finally:
        for layer, kernel in zip(model.model.layers, before, strict=True):
            layer.self_attn.kernel = kernel


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}/{c}" for f, c in CASES])
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Row, PreTrainedModel, CausalLM, Path]:
    family, name = request.param
    row = TABLE[family]
    hf = make_reference(row.cases[name], seed=len(name))
    directory = tmp_path_factory.mktemp(name)
    return row, hf, ft_from_reference(hf, directory), directory


def test_structure_follows_transformers(case: tuple[Row, PreTrainedModel, CausalLM, Path]) -> None:
    row, hf, model, directory = case
    assert type(hf).__name__ == row.reference
    assert model.config.model_type == hf.config.model_type
    assert model.config.head_dim == hf.config.head_dim
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in hf.state_dict().items()
    }  # same names, same shapes
    row.structure(hf, model, directory)


def test_logits_match_transformers_under_every_kernel(
    case: tuple[Row, PreTrainedModel, CausalLM, Path],
) -> None:
    row, hf, model, _ = case
    with _kernels_restored(model):
        for i, kernel in enumerate(row.kernels):
            ft_models.set_attention_kernel(model, kernel)
            check_logits(hf, model, row.wrong(model) if i == 0 else {})


@pytest.mark.parametrize("left", [True, False], ids=["left-pad", "right-pad"])
def test_padded_batch_matches_transformers(
    case: tuple[Row, PreTrainedModel, CausalLM, Path], left: bool
) -> None:
    row, hf, model, _ = case
    with _kernels_restored(model):
        for kernel in row.kernels:
            ft_models.set_attention_kernel(model, kernel)
            check_padded(hf, model, left=left)


def test_packed_rows_match_each_document_alone_in_transformers(
    case: tuple[Row, PreTrainedModel, CausalLM, Path],
) -> None:
    """Packed rows go through per-document attention (sliding windows and soft-caps included)."""
    row, hf, model, _ = case
    with _kernels_restored(model):
        for i, kernel in enumerate(row.kernels):
            ft_models.set_attention_kernel(model, kernel)
            check_packed(hf, model, row.wrong(model) if i == 0 else {})


@torch.no_grad()
def test_hidden_states_and_chunked_output_projection(
    case: tuple[Row, PreTrainedModel, CausalLM, Path],
) -> None:
    """A chunked loss projects final hidden slices: they and the projection must be transformers'."""
    _, hf, model, _ = case
    ids = torch.randint(0, hf.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(21))
    captured: list[torch.Tensor] = []
    handle = model.model.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    hidden = model(ids, return_hidden=True)
    handle.remove()
    out = hf(ids, output_hidden_states=True)
    torch.testing.assert_close(hidden, out.hidden_states[-1], rtol=0, atol=1e-5)  # after the final norm
    chunks = torch.cat([model.output_projection(h) for h in hidden.split(8, dim=1)], dim=1)
    torch.testing.assert_close(chunks, out.logits, rtol=0, atol=1e-5)
    assert not_close(captured[0], out.hidden_states[-1])  # wrong: before the final norm
    cap = hf.config.to_dict().get("final_logit_softcapping")
    if cap is not None:
        assert chunks.abs().max() < cap
        assert not_close(model.lm_head(hidden), out.logits)  # wrong: uncapped


def test_saved_directory_loads_in_transformers(
    case: tuple[Row, PreTrainedModel, CausalLM, Path], tmp_path: Path
) -> None:
    row, hf, model, _ = case
    check_saved_loads_in_transformers(
        hf, model, tmp_path / "saved", expect=row.saved_expect(hf, model), break_config=row.saved_break(model)
    )


@pytest.mark.parametrize("family", list(TABLE))
@torch.no_grad()
def test_cache_decoding_across_the_window(family: str, tmp_path: Path) -> None:
    row = TABLE[family]
    name, overrides = row.cache_case
    hf = make_reference({**row.cases[name], **overrides}, std=0.3, seed=row.cache_seed, norms=False)
    model = ft_from_reference(hf, tmp_path)
    check_cache_decoding(hf, model, row.cache_wrong(model))
