"""Packed rows attended one document at a time (no ``s x s`` mask): layout, numerics, windows, compile.

References: the dense block-causal mask (what every packed batch used before), handed to the same
kernel (kernel level: output and q/k/v gradients), the dense-mask forward of the same model through
``forward_prepared`` (model level: loss and every parameter gradient), and each document run alone.
Deliberately wrong variants (a layout that lets two neighbouring documents see each other, a window
off by one) must miss the same tolerances by a margin. The compiled path (the custom operator) must
equal the eager one and compile once for every layout. Memory: test_attention_segments_memory.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import ft_models
from ft_models import (
    AttentionMask,
    AutoKernel,
    DocumentSegments,
    EagerKernel,
    GroupedKernel,
    SDPAKernel,
    positions_from_documents,
    soft_cap,
)

N_H, N_KV, H_D = 6, 2, 8  # GQA 3:1
MARGIN = 100  # a wrong variant misses the tolerance by at least this factor
# Row 0: documents of 9, 3 and 12 tokens, 2 pads; row 1: 12 + 9 tokens, 5 pads; row 2 all padding.
DOCS = torch.tensor([[0] * 9 + [1] * 3 + [2] * 12 + [-1] * 2, [5] * 12 + [6] * 9 + [-1] * 5, [-1] * 26])
# The same rows with documents 0 and 1 of row 0 merged: a packer that leaks one document into the next.
LEAKY = torch.where(DOCS == 1, 0, DOCS)
KERNELS = {
    "sdpa": SDPAKernel(),
    "eager": EagerKernel(),
    "grouped": GroupedKernel(),
    "eager-softcap": EagerKernel(soft_cap(2.0)),
}


def test_layout_by_hand() -> None:
    docs = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, -1, -1, 3, 3]])
    seg = DocumentSegments.from_document_ids(docs)
    assert (seg.one_document, seg.contiguous) == (False, True)
    assert seg.groups == ((2, 3), (3, 1))  # three 2-token documents, one of 3
    # Flat indices: the 2-token documents in row order (3-4, 6-7, 10-11), the 3-token one, then pads.
    assert seg.order.tolist() == [3, 4, 6, 7, 10, 11, 0, 1, 2, 5, 8, 9]
    assert torch.equal(seg.order[seg.inverse], torch.arange(12))
    assert seg.counts_by_length.tolist() == [0, 0, 3, 1, 0, 0, 0]
    one = DocumentSegments.from_document_ids(torch.tensor([[4, 4, 4], [0, 0, 0]]))
    assert (one.one_document, one.groups) == (True, ((3, 2),))
    split = DocumentSegments.from_document_ids(torch.tensor([[0, 1, 0], [0, 0, 0]]))  # document 0 twice
    assert not split.contiguous
    pads = DocumentSegments.from_document_ids(torch.full((2, 4), -1))
    assert (pads.one_document, pads.contiguous, pads.groups) == (False, True, ())


def test_the_decoder_picks_the_path_from_the_layout() -> None:
    cpu = torch.device("cpu")
    assert AttentionMask.for_documents(3, torch.tensor([[4, 4, 4]]), cpu).q_doc is None  # plain causal
    packed = AttentionMask.for_documents(26, DOCS, cpu)
    assert packed.segments is not None
    assert not packed.prepared
    split = AttentionMask.for_documents(3, torch.tensor([[0, 1, 0]]), cpu, windows=(None, 2))
    assert split.segments is None
    assert set(split.prepared) == {None, 2}  # dense masks, built up front
    other = DocumentSegments.from_document_ids(DOCS[:2])
    with pytest.raises(ValueError, match=r"segments describe a \[2, 26\] batch, document_ids are \[3, 26\]"):
        AttentionMask.for_documents(26, DOCS, cpu, segments=other)


def _qkv(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    b, s = DOCS.shape
    # As the model hands them over: head-major views of [b, s, n, h_d] projections.
    q = torch.randn(b, s, N_H, H_D, generator=g).transpose(1, 2).to(dtype).requires_grad_()
    k = torch.randn(b, s, N_KV, H_D, generator=g).transpose(1, 2).to(dtype).requires_grad_()
    v = torch.randn(b, s, N_KV, H_D, generator=g).transpose(1, 2).to(dtype).requires_grad_()
    return q, k, v


def _run(mask: AttentionMask, kernel: object, window: int | None) -> list[torch.Tensor]:
    """Output and the q/k/v gradients of a fixed upstream gradient that is zero at padding."""
    q, k, v = _qkv()
    out = mask.attend(q, k, v, kernel, window, 0.3)  # type: ignore[arg-type]
    real = (DOCS >= 0)[:, None, :, None]
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * real
    return [out * real, *torch.autograd.grad(out, (q, k, v), grad)]


def _miss(a: list[torch.Tensor], b: list[torch.Tensor], tol: float) -> bool:
    return any(bool(((x - y).abs() > MARGIN * tol).any()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("window", [None, 1, 3, 4, 9, 12], ids=lambda w: f"window{w}")
@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_calls_match_the_dense_mask(name: str, window: int | None) -> None:
    """Outputs and gradients equal the dense-mask call of the same kernel (fp32), windows included."""
    kernel = KERNELS[name]
    cpu = torch.device("cpu")
    dense = AttentionMask.for_sequence(26, DOCS, cpu).prepare([window])
    segments = AttentionMask.for_documents(26, DOCS, cpu)
    assert segments.segments is not None
    expected, got = _run(dense, kernel, window), _run(segments, kernel, window)
    tol = 2e-6
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=tol)
    # Wrong variants: documents 0 and 1 of row 0 see each other; the window one slot wider.
    leaky = AttentionMask(26, 26, LEAKY, LEAKY, cpu, segments=DocumentSegments.from_document_ids(LEAKY))
    if window != 1:  # a one-token window sees nothing but the query itself, so nothing can leak
        assert _miss(_run(leaky, kernel, window), expected, tol)
    if window is not None and window < 12:  # a window as long as every document changes nothing
        assert _miss(_run(segments, kernel, window + 1), expected, tol)


def _model(window: int | None) -> ft_models.CausalLM:
    cfg = ft_models.mistral_config(
        "mistral-7b-v0.1",
        hidden_size=40,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=N_H,
        num_key_value_heads=N_KV,
        head_dim=H_D,
        vocab_size=97,
        sliding_window=window,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = ft_models.build_model(cfg)
    model.reset_parameters(std=0.3)
    return model.train()


def _labels(ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Next token of the same document; -100 at each document's last token and at padding."""
    nxt = torch.roll(ids, -1, 1)
    same = (docs == torch.roll(docs, -1, 1)) & (docs >= 0)
    same[:, -1] = False
    return torch.where(same, nxt, -100)


def _loss_and_grads(model: ft_models.CausalLM, forward: object) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = forward()  # type: ignore[operator]
    loss.backward()
    return [loss.detach(), *(p.grad.clone() for p in model.parameters())]


RTOL = 1e-5  # fp32: the loss and each gradient tensor within 1e-5 of its largest magnitude


def _relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest ``max|g - e| / max|e|`` over the loss and the gradient tensors."""
    return max(float((g - e).abs().max() / e.abs().max()) for g, e in zip(got, expected, strict=True))


def _summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")


@pytest.mark.parametrize("window", [None, 5], ids=["full", "window5"])
def test_loss_and_gradients_equal_the_masked_path_and_each_document_alone(window: int | None) -> None:
    model = _model(window)
    ids = torch.randint(0, 97, DOCS.shape, generator=torch.Generator().manual_seed(2))
    labels = _labels(ids, DOCS)

    def packed(docs: torch.Tensor = DOCS) -> torch.Tensor:
        return _summed_ce(
            model(ids, document_ids=DOCS, segments=DocumentSegments.from_document_ids(docs)), labels
        )

    def masked() -> torch.Tensor:
        mask = AttentionMask.for_sequence(26, DOCS, ids.device).prepare(model.model.attention_windows())
        rope = model.model.rotary_emb(positions_from_documents(DOCS))
        return _summed_ce(model.output_projection(model.model.forward_prepared(ids, rope, mask)), labels)

    def alone() -> torch.Tensor:  # every document as its own batch; the summed loss adds up
        total = torch.zeros(())
        for r in range(DOCS.shape[0]):
            for d in DOCS[r].unique().tolist():
                if d >= 0:
                    cols = (DOCS[r] == d).nonzero().squeeze(1)
                    total = total + _summed_ce(model(ids[r, cols][None]), labels[r, cols][None])
        return total

    got = _loss_and_grads(model, packed)
    for reference in (masked, alone):
        expected = _loss_and_grads(model, reference)
        assert _relative_error(got, expected) < RTOL  # observed: about 1e-6
    assert _relative_error(_loss_and_grads(model, lambda: packed(LEAKY)), expected) > MARGIN * RTOL
    if window is not None:
        for layer in model.model.layers:
            layer.self_attn.window = window + 1
        assert _relative_error(_loss_and_grads(model, packed), expected) > MARGIN * RTOL


def _compiled_runs(
    kernel: object,
    layouts: list[torch.Tensor],
    dtype: torch.dtype = torch.float32,
    eager_kernel: object = None,
) -> list[list[list[torch.Tensor]]]:
    """Eager and compiled (``aot_eager``) outputs and gradients of one attention call per layout.

    ``eager_kernel`` replaces ``kernel`` in the eager run (a wrong variant's reference).
    """
    torch._dynamo.reset()
    counters.clear()

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        return mask.attend(q, k, v, kernel, 4, 0.3)  # type: ignore[arg-type]

    def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        return mask.attend(q, k, v, eager_kernel or kernel, 4, 0.3)  # type: ignore[arg-type]

    compiled = torch.compile(attend, backend="aot_eager")
    diffs = []
    for docs in layouts:
        mask = AttentionMask.for_documents(docs.shape[1], docs, docs.device)
        real = (docs >= 0)[:, None, :, None]
        runs = []
        for fn in (eager, compiled):
            q, k, v = _qkv(dtype, seed=3)
            out = fn(q, k, v, mask)
            grads = torch.autograd.grad(out, (q, k, v), (out.detach() * 0 + 1) * real)
            runs.append([out * real, *grads])
        diffs.append(runs)
    return diffs


@pytest.mark.parametrize("name", ["sdpa", "grouped", "eager-softcap", "auto"])
def test_compiled_operator_matches_eager_and_compiles_once(name: str) -> None:
    """Under torch.compile the packed-row attention is one custom operator: one graph for every layout."""
    kernel = AutoKernel() if name == "auto" else KERNELS[name]
    layouts = [DOCS, LEAKY, torch.tensor([[0] * 20 + [1] * 6, [3] * 1 + [4] * 25, [0] * 26])]
    for eager, compiled in _compiled_runs(kernel, layouts):
        for e, c in zip(eager, compiled, strict=True):
            torch.testing.assert_close(c, e, rtol=0, atol=2e-6)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


def test_compiled_auto_picks_the_eager_kernels_in_bf16() -> None:
    """bf16 training calls: ``auto`` runs the grouped products in the operator's forward and in its
    recomputed backward (the caller's gradient flag is passed in), so compiled equals eager bit for bit;
    SDPA, what a forward below autograd would pick without the flag, is shown to differ."""
    for eager, compiled in _compiled_runs(AutoKernel(), [DOCS], torch.bfloat16):
        assert all(torch.equal(e, c) for e, c in zip(eager, compiled, strict=True))
    for eager, compiled in _compiled_runs(AutoKernel(), [DOCS], torch.bfloat16, eager_kernel=SDPAKernel()):
        assert not torch.equal(eager[0], compiled[0])


def test_a_kernel_the_operator_cannot_name_is_traced_per_layout() -> None:
    """Wrong variant of the compile check: tracing the Python loop compiles a graph per layout."""

    class Unnamed:
        def __call__(self, *args: object) -> torch.Tensor:
            return SDPAKernel()(*args)  # type: ignore[arg-type]

    layouts = [DOCS, torch.tensor([[0] * 20 + [1] * 6, [3] * 1 + [4] * 25, [0] * 26])]
    for eager, compiled in _compiled_runs(Unnamed(), layouts):
        for e, c in zip(eager, compiled, strict=True):
            torch.testing.assert_close(c, e, rtol=0, atol=2e-6)
    assert counters["stats"]["unique_graphs"] == 2
