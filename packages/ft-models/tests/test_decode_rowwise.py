"""Few-row linears as streaming reductions (``_rowwise``) and the compiled decode step that uses them.

References: ``F.linear`` in float64 for the kernel; transformers' ``generate`` (greedy) and ft's eager
decode step (``F.linear`` and SDPA, unchanged) for the compiled step; ``F.scaled_dot_product_attention``
in float64 for single-query attention. Every check also runs a deliberately wrong kernel (the ``[n, m]``
product read back without its transpose, a layout bug invisible at one row; the weight's input axis
reversed; query heads paired round-robin with key/value heads; the mask ignored) and asserts that it
fails the same tolerance.

Tolerance of the step's logits: the compiled step differs from the eager one only in summation order
(the reductions here, fused norms and attention from inductor), all in fp32. A length-k fp32 dot
product carries a relative error of at most ~k * 2**-24 (k <= 84 here: ~5e-6); through three layers,
norms and the output projection we allow ``LOGIT_RTOL`` = 1e-4 of the logits' largest magnitude, about
40x the 2.6e-6 observed at batch 3; the wrong kernels are off by O(1) of that scale.

The LoRA test needs ft-peft (skipped where only ft-models is installed) and compiles a second graph, so
it is marked slow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from generate_support import assert_diverse, ft_rows, hf_new_tokens, make_pair, ragged_prompts
from torch.profiler import ProfilerActivity, profile

import ft_models
from ft_models import CausalLM, KVCache, _decode_step
from ft_models._decode_step import DecodeStep, _forward
from ft_models._rowwise import RowwiseLinear, SingleQueryAttention, rowwise_linear, single_query_attention

LOGIT_RTOL = 1e-4
STEPS = 12
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def no_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Wrong: reads the ``[n, m]`` product as ``[m, n]`` (right only when ``m == 1``)."""
    rows = x.reshape(-1, x.shape[-1]).float()  # [m, k]
    out = (weight.float()[:, None, :] * rows[None]).sum(-1)  # [n, m]
    if bias is not None:
        out = out + bias.float()[:, None]
    return out.reshape(-1, weight.shape[0]).to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


class _WrongMode(RowwiseLinear):
    """The mode with a wrong kernel (same routing), to show the step checks can fail."""

    def __init__(self, max_rows: int, kernel: Kernel) -> None:
        super().__init__(max_rows)
        self.kernel = kernel

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.linear and args[0].numel() <= self.max_rows * args[0].shape[-1]:
            return self.kernel(args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias"))
        return func(*args, **kwargs)


def _linear_error(kernel: Kernel, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    ref = F.linear(x.double(), w.double(), b.double())
    return float((kernel(x, w, b).double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 2**-8)])
def test_rowwise_linear_matches_float64_linear(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(41, 37, generator=g).to(dtype)  # odd n, k
    b = torch.randn(41, generator=g).to(dtype)
    for shape in [(1, 1, 37), (3, 1, 37), (2, 3, 37)]:  # m = 1, 3, 6
        x = torch.randn(shape, generator=g).to(dtype)
        assert rowwise_linear(x, w, b).shape == (*shape[:-1], 41)
        assert rowwise_linear(x, w, b).dtype == dtype
        # bf16: the fp32-accumulated result is rounded once to bf16 (relative error <= 2**-9).
        assert _linear_error(rowwise_linear, x, w, b) < tol
        wrong = _linear_error(no_transpose, x, w, b)
        assert (wrong < tol) == (x.numel() == 37), wrong  # the layout bug shows from two rows on


def _aten_ops(fn: Callable[[], torch.Tensor]) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_mode_reroutes_linears_up_to_max_rows() -> None:
    """Eagerly, under the mode: two rows avoid BLAS (no mm/addmm), three rows keep it."""
    lin = torch.nn.Linear(37, 41)
    with torch.no_grad(), RowwiseLinear(max_rows=2):
        small = _aten_ops(lambda: lin(torch.randn(2, 1, 37)))
        large = _aten_ops(lambda: lin(torch.randn(3, 1, 37)))
    blas = {"aten::mm", "aten::addmm", "aten::matmul"}
    assert not small & blas, small
    assert "aten::sum" in small, small
    assert large & blas, large


def heads_round_robin(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Wrong: query head ``i`` reads key/value head ``i % n_kv`` (``repeat`` instead of grouping)."""
    groups = q.shape[1] // k.shape[1]
    return single_query_attention(
        q, k.repeat(1, groups, 1, 1), v.repeat(1, groups, 1, 1), mask, scale
    )  # n_kv = n_h: plain pairing


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 2**-8)])
def test_single_query_attention_matches_float64_sdpa(dtype: torch.dtype, tol: float) -> None:
    """GQA with 6 query / 2 key-value heads, head dim 5, 11 keys, rows masking different keys."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 1, 5, generator=g).to(dtype)
    k = torch.randn(2, 2, 11, 5, generator=g).to(dtype)
    v = torch.randn(2, 2, 11, 5, generator=g).to(dtype)
    mask = torch.rand(2, 1, 1, 11, generator=g) < 0.6
    mask[..., 0] = True  # no row fully masked
    ref = F.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, scale=0.37, enable_gqa=True
    )

    def error(kernel: Callable[..., torch.Tensor]) -> float:
        out = kernel(q, k, v, mask, 0.37)
        assert out.shape == q.shape
        assert out.dtype == dtype
        return float((out.double() - ref).abs().max() / ref.abs().max())

    assert error(single_query_attention) < tol
    assert error(heads_round_robin) > tol
    # The mask matters: attending to every key fails too.
    assert error(lambda q, k, v, m, s: single_query_attention(q, k, v, torch.ones_like(m), s)) > tol


def test_attention_mode_reroutes_only_single_query_masked_calls() -> None:
    """Eagerly, under the mode: one query with a bool mask avoids the fused SDPA kernels; two queries,
    or ``is_causal``, keep them."""
    q1, q2 = torch.randn(1, 4, 1, 8), torch.randn(1, 4, 2, 8)
    k = v = torch.randn(1, 2, 6, 8)
    mask = torch.ones(1, 1, 1, 6, dtype=torch.bool)

    def sdpa(q: torch.Tensor, **kw: object) -> Callable[[], torch.Tensor]:
        return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)  # type: ignore[arg-type]

    with torch.no_grad(), SingleQueryAttention():
        single = _aten_ops(sdpa(q1, attn_mask=mask))
        two = _aten_ops(sdpa(q2, attn_mask=mask.expand(1, 1, 2, 6)))
        causal = _aten_ops(sdpa(q1, is_causal=True))
    fused = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention"}
    assert not single & fused, single
    assert two & fused, two
    assert causal & fused, causal


def _prefilled(model: CausalLM, rows: list[torch.Tensor]) -> tuple[KVCache, torch.Tensor]:
    ids, docs = ft_models.left_pad(rows)
    cache = model.new_cache(len(rows), 32)
    hidden = model(ids, document_ids=docs, cache=cache, return_hidden=True)
    return cache, model.output_projection(hidden[:, -1]).float()


def _clone(cache: KVCache) -> KVCache:
    out = KVCache(1, 1, 1, 1, 1, dtype=cache.keys[0].dtype, device="cpu")
    out.keys = [k.clone() for k in cache.keys]
    out.values = [v.clone() for v in cache.values]
    out.valid, out.positions = cache.valid.clone(), cache.positions.clone()
    out.token_ids, out.length = cache.token_ids.clone(), cache.length
    return out


def step_logit_error(model: CausalLM, rows: list[torch.Tensor], fn: Callable[..., torch.Tensor]) -> float:
    """Largest |logit difference| / largest |logit| between ``fn`` as the step and the eager step.

    Both run on copies of one prefilled cache and are fed the same (eager greedy) tokens.
    """
    with torch.inference_mode():
        cache, logits = _prefilled(model, rows)
        other = _clone(cache)
        eager, tested = DecodeStep(model), DecodeStep(model)
        tested.fn = fn
        active = torch.ones(len(rows), dtype=torch.bool)
        worst, scale = 0.0, 0.0
        for _ in range(STEPS):
            token = logits.argmax(-1)
            logits = eager(cache, token, active)
            got = tested(other, token, active)
            worst = max(worst, float((got - logits).abs().max()))
            scale = max(scale, float(logits.abs().max()))
    return worst / scale


def _with_mode(mode: Callable[[], RowwiseLinear]) -> Callable[..., torch.Tensor]:
    def step(*args: object) -> torch.Tensor:
        with mode():
            return _forward(*args)  # type: ignore[arg-type]

    return step


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, CausalLM]:
    return make_pair("llama", tmp_path_factory.mktemp("rowwise"))


def flipped_k(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Wrong: pairs input feature i with weight column k-1-i (a reduction over misaligned axes)."""
    return rowwise_linear(x, weight.flip(-1), bias)


@pytest.mark.parametrize(
    ("lengths", "max_rows", "wrong_kernel"),
    [((6,), None, flipped_k), ((5, 9, 7), 8, no_transpose)],
    ids=["batch1-default", "batch3-max_rows8"],
)
def test_compiled_step_matches_transformers_and_eager(
    pair: tuple[object, CausalLM],
    monkeypatch: pytest.MonkeyPatch,
    lengths: tuple[int, ...],
    max_rows: int | None,
    wrong_kernel: Kernel,
) -> None:
    """Batch 1 is what the default threshold rewrites; batch 3 with the threshold raised covers the
    multi-row layout (the ``[n, m]`` product read back as ``[m, n]`` fails only there)."""
    if max_rows is not None:
        monkeypatch.setattr(_decode_step, "ROWWISE_MAX_ROWS", max_rows)
    assert len(lengths) <= _decode_step.ROWWISE_MAX_ROWS  # every linear of the step is rewritten
    hf, model = pair
    rows = ragged_prompts(131, lengths)
    torch._dynamo.reset()
    new, got = ft_models.generate(model, rows, STEPS, compile=True)
    assert got.tolist() == [STEPS] * len(rows)
    assert_diverse(new)
    assert ft_rows(new, got) == hf_new_tokens(hf, rows, STEPS, do_sample=False)  # type: ignore[arg-type]
    err = step_logit_error(model, rows, DecodeStep(model, compile=True).fn)
    assert err < LOGIT_RTOL, err
    # The same check on a wrong kernel (compiled the same way) fails it.
    wrong = torch.compile(_with_mode(lambda: _WrongMode(len(rows), wrong_kernel)), dynamic=False)
    wrong_err = step_logit_error(model, rows, wrong)
    assert wrong_err > LOGIT_RTOL, wrong_err


@pytest.mark.slow
def test_lora_model_through_compiled_step(
    pair: tuple[object, CausalLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adapter layers call ``F.linear`` on the base weight and on A and B: all rerouted, same result."""
    ft_peft = pytest.importorskip("ft_peft")
    monkeypatch.setattr(_decode_step, "ROWWISE_MAX_ROWS", 8)  # the batch of 3 below is rewritten too
    model = copy.deepcopy(pair[1])
    ft_peft.apply_lora(model, ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], rank=3)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, layer in ft_peft.lora_modules(model):  # B = 0 at init would hide the adapter path
            layer.lora_B.weight.copy_(0.3 * torch.randn(layer.lora_B.weight.shape, generator=g))
    model.eval()
    rows = ragged_prompts(131, (6, 3, 8), seed=4)
    torch._dynamo.reset()
    err = step_logit_error(model, rows, DecodeStep(model, compile=True).fn)
    assert err < LOGIT_RTOL, err
    new, _ = ft_models.generate(model, rows, STEPS, compile=True)
    assert_diverse(new)
    assert torch.equal(new, ft_models.generate(model, rows, STEPS)[0])

    def adapters_off(*args: object) -> torch.Tensor:  # wrong: a step that bypasses the adapters
        with ft_peft.disable_adapters(model):
            return _forward(*args)  # type: ignore[arg-type]

    wrong_err = step_logit_error(model, rows, adapters_off)
    assert wrong_err > LOGIT_RTOL, wrong_err
