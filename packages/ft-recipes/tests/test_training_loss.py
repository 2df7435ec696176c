"""linear_cross_entropy: parity with full-logit cross-entropy, no [b, s, v] tensor, accumulation invariance."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_training_support import GEMMA2, LLAMA, batch, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import ft_dist
from ft_recipes.training import (
    LossError,
    _loss,
    apply_precision,
    build_optimizer,
    clip_grad_norm,
    linear_cross_entropy,
    resolve_precision,
)


def _reference(
    model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, normalizer: float
) -> torch.Tensor:
    logits = model(ids).float()  # full [b, s, v] logits (the model applies its soft-cap)
    return (
        F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        / normalizer
    )


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_matches_full_logits_cross_entropy(config: dict[str, Any]) -> None:
    model = tiny_model(config)
    vocab = config["vocab_size"]
    ids, labels = batch(vocab, 3, 17, [17, 4, 9])
    normalizer = 41.0  # a window total larger than this batch's 30 trained tokens

    expected = _reference(model, ids, labels, normalizer)
    expected_grads = _grads(model, expected)
    hidden = model(ids, return_hidden=True)
    loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=normalizer, chunk_size=7)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    got_grads = _grads(model, loss)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)

    if config["model_type"] == "gemma2":  # wrong variant: projecting without the final soft-cap
        hidden = model(ids, return_hidden=True)
        uncapped = linear_cross_entropy(hidden, model.lm_head, labels, normalizer=normalizer, chunk_size=7)
        assert not torch.allclose(uncapped, expected, rtol=1e-3, atol=0)


_RIGHT = _loss._GradInForwardCE


class _IgnoresUpstream(_RIGHT):
    """Wrong: returns the forward-computed gradients without multiplying by the upstream gradient."""

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[no-untyped-def, override]
        return _RIGHT.backward(ctx, torch.ones_like(grad_total))


@pytest.mark.parametrize("config", [LLAMA, GEMMA2], ids=["llama-untied", "gemma2-tied-softcap"])
def test_gradient_in_forward_follows_the_upstream_gradient(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward-computed gradients are scaled by what flows in (a loss scale, an accumulation
    divisor): ``2.5 * loss`` gives 2.5x the reference gradients of every parameter, the tied
    embedding and the soft-capped projection included. Ignoring the upstream gradient fails."""
    model = tiny_model(config, seed=4)
    ids, labels = batch(config["vocab_size"], 2, 11, [11, 6])
    expected = _grads(model, 2.5 * _reference(model, ids, labels, 17.0))

    def grads() -> dict[str, torch.Tensor]:
        hidden = model(ids, return_hidden=True)
        loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=17.0, chunk_size=5)
        return _grads(model, 2.5 * loss)

    got = grads()
    assert got.keys() == expected.keys()
    for name, grad in expected.items():  # fp32 summation-order noise: ~3e-7 on gradients of size ~1
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    monkeypatch.setattr(_loss, "_GradInForwardCE", _IgnoresUpstream)
    wrong = grads()
    name = "model.embed_tokens.weight"
    assert not torch.allclose(wrong[name], expected[name], rtol=1e-5, atol=1e-6)


def _unshifted(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrong: softmax without subtracting the row maximum (overflows on large logits)."""
    e = logits.float().exp()
    sums = e.sum(-1)
    loss = (sums.log() - logits.float()[torch.arange(len(targets)), targets]).sum()
    return loss, (e / sums[:, None]).to(logits.dtype)  # and forgets the -1 at the target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_cross_entropy_and_gradient_match_float64(dtype: torch.dtype) -> None:
    """The fused per-chunk loss and logits gradient against float64 F.cross_entropy and autograd, on
    logits up to 300 (exp overflows fp32 unshifted) and a row whose target holds ~all the mass."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 101, generator=g) * 4).to(dtype)  # odd vocabulary
    logits[0] += 300.0
    targets = torch.randint(0, 101, (9,), generator=g)
    logits[1, targets[1]] = 60.0  # p(target) = 1 - tiny: the gradient there is ~0, not 1 - 1 + noise
    ref_in = logits.double().requires_grad_()
    ref = F.cross_entropy(ref_in, targets, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, ref_in)
    before = logits.clone()
    loss, grad = _loss._cross_entropy_and_grad(logits, targets)
    assert torch.equal(logits, before)  # the caller's logits are untouched (fp32: no in-place on them)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype
    assert grad.shape == logits.shape
    assert abs(float(loss) - float(ref)) <= 1e-6 * float(ref)
    # fp32: a few ulps of fp32 arithmetic; bf16: the fp32 value rounded once (within one bf16 ulp).
    # Plus fp32's resolution of 1 - p at the target (p within 2**-24 of 1 reads as exactly 1).
    rel = 2**-22 if dtype == torch.float32 else 2**-8

    def close(x: torch.Tensor) -> bool:
        return bool(torch.all((x.double() - ref_grad).abs() <= rel * ref_grad.abs() + 2**-24))

    assert close(grad)
    wrong_loss, wrong_grad = _unshifted(logits, targets)
    assert not torch.isfinite(wrong_loss) or abs(float(wrong_loss) - float(ref)) > 1e-3 * float(ref)
    assert not close(wrong_grad)


class _ProjectionCounter(TorchDispatchMode):
    """Counts matrix products whose output has ``vocab`` columns (output projections)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.count = vocab, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        mm = func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
        if mm and out.shape[-1] == self.vocab and out.numel():  # not the zero-row probe
            self.count += 1
        return out


@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained-head", "frozen-head"])
def test_projection_runs_once_per_chunk_unless_recomputing(frozen_head: bool) -> None:
    """The plain loss projects each chunk once per step (forward and backward together); the
    per-position log-probs path, which recomputes, projects each chunk twice."""
    model = tiny_model(LLAMA)
    if frozen_head:  # as under LoRA: only the hidden states need a gradient
        model.lm_head.weight.requires_grad_(False)
    ids, labels = batch(97, 2, 13, [13, 13])  # 26 trained positions: 4 chunks of 7
    for logprobs, per_chunk in [(False, 1), (True, 2)]:
        with _ProjectionCounter(97) as counter:
            out = linear_cross_entropy(
                model(ids, return_hidden=True),
                model.output_projection,
                labels,
                normalizer=26,
                chunk_size=7,
                return_logprobs=logprobs,  # type: ignore[call-overload]
            )
            (out[0] if logprobs else out).backward()
        assert counter.count == 4 * per_chunk, (logprobs, counter.count)


def test_logprobs_are_per_position_and_differentiable() -> None:
    model = tiny_model(LLAMA, seed=2)
    ids, labels = batch(97, 2, 12, [12, 5])
    logits = model(ids).float()
    expected = -F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")  # [b, s]
    expected = expected.masked_fill(labels == -100, 0.0)
    expected_grads = _grads(model, expected.sum(-1)[0] - 2 * expected.sum(-1)[1])

    loss, logprobs = linear_cross_entropy(
        model(ids, return_hidden=True),
        model.output_projection,
        labels,
        normalizer=17,
        chunk_size=4,
        return_logprobs=True,
    )
    assert logprobs.shape == labels.shape
    torch.testing.assert_close(logprobs, expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, -expected.detach().sum() / 17, rtol=1e-6, atol=0)
    got_grads = _grads(model, logprobs.sum(-1)[0] - 2 * logprobs.sum(-1)[1])
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


class _NumelRecorder(TorchDispatchMode):
    """Records the element count of every tensor an op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numels: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.numels.update(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_never_materialises_batch_by_seq_by_vocab(precision: str) -> None:
    model = tiny_model(LLAMA)
    apply_precision(model, resolve_precision(precision, "cpu"))
    ft_dist.apply_activation_checkpointing(model)
    optimizer = build_optimizer(model, "adamw", lr=1e-3)
    b, s, v = 2, 13, 97
    ids, labels = batch(v, b, s, [s, s])  # every position trained: only chunking keeps logits small
    with _NumelRecorder() as chunked:  # one whole training step
        hidden = model(ids, return_hidden=True)
        loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=b * s, chunk_size=8)
        loss.backward()
        clip_grad_norm(model, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert b * s * v not in chunked.numels
    assert 8 * v in chunked.numels  # the chunks were there
    with _NumelRecorder() as naive:  # wrong variant: full logits
        _reference(model, ids, labels, b * s).backward()
    assert b * s * v in naive.numels


def _window_grads(
    model: torch.nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]], *, naive: bool
) -> torch.Tensor:
    model.zero_grad()
    window_tokens = sum(int((lab != -100).sum()) for _, lab in micro)
    for ids, labels in micro:
        hidden = model(ids, return_hidden=True)
        if naive:  # the per-micro-batch mean, averaged over the window
            per_mb = int((labels != -100).sum())
            loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=per_mb) / len(
                micro
            )
        else:
            loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=window_tokens)
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_gradient_accumulation_invariance() -> None:
    model = tiny_model(LLAMA, seed=3)
    trained = [15, 14, 2, 3, 9, 10, 1, 4]  # micro-batches of 2 hold 29, 5, 19, 5 trained tokens (>= 2x apart)
    ids, labels = batch(97, 8, 15, trained)
    one = _window_grads(model, [(ids, labels)], naive=False)  # batch 8 x 1 step
    micro = [(ids[i : i + 2], labels[i : i + 2]) for i in range(0, 8, 2)]
    four = _window_grads(model, micro, naive=False)  # batch 2 x 4 accumulation steps
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-7)
    naive = _window_grads(model, micro, naive=True)
    assert not torch.allclose(naive, one, rtol=1e-5, atol=1e-7)


def test_no_trained_token_and_bad_input() -> None:
    model = tiny_model(LLAMA)
    ids, labels = batch(97, 2, 6, [0, 0])
    loss = linear_cross_entropy(model(ids, return_hidden=True), model.output_projection, labels, normalizer=1)
    assert loss.item() == 0.0
    loss.backward()
    hidden = torch.zeros(2, 6, 24)
    with pytest.raises(LossError, match="normalizer must be > 0, got 0"):
        linear_cross_entropy(hidden, model.output_projection, labels, normalizer=0)
    with pytest.raises(LossError, match=r"hidden \(2, 6, 24\) does not match labels \(2, 5\)"):
        linear_cross_entropy(hidden, model.output_projection, labels[:, :5], normalizer=1)
