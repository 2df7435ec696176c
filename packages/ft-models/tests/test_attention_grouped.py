"""``grouped_matmul_attention`` (bmm attention over query-head groups): numerics (which calls run it is
``test_attention_setting.py``).

References: ``F.scaled_dot_product_attention`` in float64 (output and the three input gradients), and,
on the real SmolLM2-135M-Instruct weights, the float64 model. Every check also runs deliberately wrong
variants (query heads paired round-robin with key/value heads, the mask ignored, a backward that drops
the score scale) and asserts that they fail the same tolerance.

Tolerances. fp32: every product is an fp32 dot product of length <= 13, ``1e-5`` of the largest
magnitude. bf16: the inputs, the probabilities read by ``p @ v`` and the output are rounded to bf16
(relative ``2**-9`` each, as in SDPA), and the scores are ``scale * (q @ k^T)`` rounded to bf16, so a
score ``x`` is off by up to ``|x| * 2**-9`` and a probability by a relative ``2 * max|x| * 2**-9``. We
allow ``2**-8 * (1 + max|x|)`` of the largest magnitude for the output and the gradients alike
(observed: a quarter to a third of that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ft_models import AttentionMask, SDPAKernel, grouped_matmul_attention
from ft_models._attention import _GroupedAttention, _mask_bias

B, N_H, N_KV, S, H_D = 2, 6, 2, 13, 12  # g = 3, odd length
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]


def _masks() -> dict[str, torch.Tensor | None]:
    docs = torch.tensor([[0] * 5 + [1] * 6 + [-1] * 2, [0] * 13])  # packed row with padding; plain row
    return {"causal": None, "packed": AttentionMask.for_sequence(S, docs, torch.device("cpu")).dense()}


def _inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # q/k as the model hands them over: head-major views of [b, s, n, h_d] projections.
    q = (torch.randn(B, S, N_H, H_D, generator=g) * 1.5).transpose(1, 2)
    k = (torch.randn(B, S, N_KV, H_D, generator=g) * 1.5).transpose(1, 2)
    v = torch.randn(B, S, N_KV, H_D, generator=g).transpose(1, 2)
    grad = torch.randn(B, N_H, S, H_D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype), grad.to(dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> Any:
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )


def _round_robin(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> Any:
    """Wrong: query head ``i`` with key/value head ``i % n_kv`` (repeat instead of repeat_interleave)."""
    order = torch.arange(N_H).view(N_H // N_KV, N_KV).t().reshape(-1)  # heads regrouped by i % n_kv
    out = grouped_matmul_attention(q[:, order], k, v, mask, scale)
    return out[:, torch.argsort(order)]


def _no_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> Any:
    """Wrong: every key visible."""
    return grouped_matmul_attention(q, k, v, torch.ones(1, 1, S, S, dtype=torch.bool), scale)


class _UnscaledBackward(_GroupedAttention):
    """Wrong: the backward forgets the score scale (dq and dk off by 1 / scale)."""

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        _GroupedAttention.setup_context(ctx, inputs, output)
        ctx.scale = 1.0


def _unscaled_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> Any:
    return _UnscaledBackward.apply(q, k, v, _mask_bias(mask, q), scale)[0]


def _errors(fn: Attention, dtype: torch.dtype, mask: torch.Tensor | None) -> list[float]:
    """Relative max errors of (out, dq, dk, dv) against float64 SDPA."""
    q, k, v, grad = _inputs(dtype)
    scale = H_D**-0.5
    results = []
    for f, cast in ((fn, dtype), (_sdpa, torch.float64)):
        leaves = [t.detach().to(cast).requires_grad_() for t in (q, k, v)]
        out = f(*leaves, mask, scale)
        out.backward(grad.to(cast))
        results.append([out.detach(), *(t.grad for t in leaves)])
    got, ref = results
    return [float((a.double() - r).abs().max() / r.abs().max()) for a, r in zip(got, ref, strict=True)]


def _tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return 1e-5
    q, k, _, _ = _inputs(dtype)
    scores = torch.matmul(q.double(), k.double().repeat_interleave(N_H // N_KV, 1).transpose(-1, -2))
    return 2**-8 * (1 + float(scores.abs().max()) * H_D**-0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["causal", "packed"])
def test_matches_float64_sdpa_and_wrong_variants_fail(dtype: torch.dtype, mask_kind: str) -> None:
    mask = _masks()[mask_kind]
    tol = _tolerance(dtype)
    q, k, v, _ = _inputs(dtype)
    out = grouped_matmul_attention(q, k, v, mask, H_D**-0.5)
    assert out.shape == (B, N_H, S, H_D)
    assert out.dtype == dtype
    errors = _errors(grouped_matmul_attention, dtype, mask)
    assert max(errors) < tol, errors
    assert min(_errors(_round_robin, dtype, mask)[0::3]) > tol  # output and dv
    assert _errors(_no_mask, dtype, mask)[0] > tol
    unscaled = _errors(_unscaled_backward, dtype, mask)
    assert unscaled[0] < tol  # the same forward ...
    assert min(unscaled[1:3]) > tol  # ... but dq and dk off
    if dtype == torch.bfloat16:  # no worse than SDPA's own bf16 result by more than the score rounding
        sdpa = _errors(_sdpa, dtype, mask)
        assert max(errors) < 4 * max(sdpa), (errors, sdpa)


def test_compiled_kernel_keeps_the_numerics() -> None:
    """Through ``torch.compile`` (as ``compile: true`` runs it, fused by inductor) the same tolerance holds."""
    torch._dynamo.reset()
    mask = _masks()["packed"]
    compiled = torch.compile(grouped_matmul_attention, fullgraph=True)
    errors = _errors(compiled, torch.bfloat16, mask)
    assert max(errors) < _tolerance(torch.bfloat16), errors
    assert _errors(_no_mask, torch.bfloat16, mask)[0] > _tolerance(torch.bfloat16)


@pytest.mark.slow
def test_real_smollm2_bf16_logits_stay_as_close_to_float64_as_with_sdpa() -> None:
    """On real weights the bf16 scores cost little: KL to the float64 model within 1.5x of SDPA's."""
    import ft_models
    from ft_models._assets import smollm2_gguf_path

    path = str(smollm2_gguf_path())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (2, 96), generator=g)
    docs = torch.tensor([[0] * 40 + [1] * 56, [0] * 96])
    with torch.no_grad():
        ref = torch.log_softmax(
            ft_models.from_pretrained(path, dtype=torch.float64)(ids, document_ids=docs), -1
        )
        model = ft_models.from_pretrained(path, dtype=torch.bfloat16)

    def kl(kernel: Attention | None) -> float:
        for layer in model.model.layers:
            layer.self_attn.kernel = kernel if kernel is not None else SDPAKernel()
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, document_ids=docs).double(), -1)
        return float((ref.exp() * (ref - logp)).sum(-1).mean())

    sdpa, grouped = kl(None), kl(grouped_matmul_attention)
    assert grouped < 1.5 * sdpa, (grouped, sdpa)

    def unmasked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, scale: float) -> Any:
        # Every key visible (packed documents reach the kernel one at a time, on the causal path).
        everything = torch.ones(1, 1, q.shape[2], k.shape[2], dtype=torch.bool)
        return grouped_matmul_attention(q, k, v, everything, scale)

    assert kl(unmasked) > 10 * sdpa
