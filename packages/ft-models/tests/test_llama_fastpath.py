"""No batch without a cache hands the kernel an ``[b, 1, s, s]`` mask.

A collator gives ``document_ids`` for every batch, also for unpacked full rows. One document per row
without padding takes the kernels' ``is_causal`` path; packed and padded rows reach the kernel one
document at a time, also on that path. References: transformers on the same rows, and the masked path
forced on (the kernel handed the dense mask).
"""

from __future__ import annotations

import pytest
import torch
from llama_support import make_hf

import ft_models
from ft_models import AttentionMask, CausalLM


class _Recorder:
    """Wraps a kernel and records whether each call got a dense mask."""

    def __init__(self, inner: object) -> None:
        self.inner, self.masked = inner, []

    def __call__(self, q, k, v, mask, scale):  # type: ignore[no-untyped-def]
        self.masked.append(mask is not None)
        return self.inner(q, k, v, mask, scale)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    hf = make_hf("gqa4", tie=False, seed=5)
    directory = tmp_path_factory.mktemp("fast")
    hf.save_pretrained(directory)
    return hf, ft_models.from_pretrained(directory)


def masked_forward(model: CausalLM, ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Logits through the dense-mask path (every layer's kernel handed ``[b, 1, s, s]``), as before."""
    mask = AttentionMask.for_sequence(ids.shape[1], docs, ids.device).prepare(model.model.attention_windows())
    rope = model.model.rotary_emb(ft_models.positions_from_documents(docs))
    return model.output_projection(model.model.forward_prepared(ids, rope, mask))


def _record(model: CausalLM) -> list[_Recorder]:
    recorders = []
    for layer in model.model.layers:
        if isinstance(layer.self_attn.kernel, _Recorder):
            layer.self_attn.kernel = layer.self_attn.kernel.inner
        recorders.append(_Recorder(layer.self_attn.kernel))
        layer.self_attn.kernel = recorders[-1]
    return recorders


@torch.no_grad()
def test_one_document_rows_use_the_causal_path_and_match(pair) -> None:  # type: ignore[no-untyped-def]
    hf, model = pair
    ids = torch.randint(3, hf.config.vocab_size, (3, 23), generator=torch.Generator().manual_seed(0))
    docs = torch.tensor([0, 4, 7])[:, None].expand(3, 23)  # one (differently numbered) document per row
    recorders = _record(model)
    fast = model(ids, document_ids=docs)
    assert not any(m for r in recorders for m in r.masked)
    reference = hf(ids).logits
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    # The masked path (what the decoder did before) gives the same logits.
    masked = masked_forward(model, ids, docs)
    assert all(r.masked[-1] for r in recorders)
    torch.testing.assert_close(fast, masked, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "docs",
    [
        [[0] * 10 + [1] * 13, [2] * 23],  # two packed documents in row 0
        [[0] * 20 + [-1] * 3, [0] * 23],  # right padding
        [[-1] * 23, [0] * 23],  # an all-padding row
    ],
    ids=["packed", "padded", "pad-row"],
)
@torch.no_grad()
def test_packed_or_padded_rows_are_attended_per_document(pair, docs) -> None:  # type: ignore[no-untyped-def]
    hf, model = pair
    docs = torch.tensor(docs)
    ids = torch.randint(3, hf.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(1))
    recorders = _record(model)
    out = model(ids, document_ids=docs)
    assert not any(m for r in recorders for m in r.masked)
    real = docs >= 0
    # The masked path (the kernel handed the dense block-causal mask) gives the same real tokens.
    masked = masked_forward(model, ids, docs)
    assert all(r.masked[-1] for r in recorders)
    torch.testing.assert_close(out[real], masked[real], rtol=0, atol=1e-5)
    assert torch.isfinite(out).all()
    # Wrong variant: treating these rows as plain causal changes logits (a later document's tokens, or
    # the pad queries).
    plain = model(ids, position_ids=ft_models.positions_from_documents(docs))
    assert not torch.allclose(out, plain, rtol=0, atol=1e-5)
