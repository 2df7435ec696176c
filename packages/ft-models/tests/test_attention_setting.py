"""The attention setting: ``set_attention_kernel(model, name)`` and the ``auto`` rule the README documents.

What runs is observed, not inferred: the profiler sees the kernel's own ops (a fused
``scaled_dot_product`` op for SDPA; ``baddbmm`` products and no SDPA op for the grouped kernel; an fp32
``repeat_interleave`` expansion and neither of the others for eager). ``auto`` is checked against the
rule table in ft-models' README, cell by cell, on every CPU combination (through the profiler, eager and
compiled) and for the accelerator row through the rule function (and the profiler where a GPU exists).
Negative controls: SDPAKernel is shown to stay on SDPA for exactly the call ``auto`` sends to the
grouped kernel (the old hidden rerouting is gone), and each observed signature is shown to tell the
kernels apart.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import ft_models
from ft_models import (
    ATTENTION_KERNELS,
    AttentionMask,
    AutoKernel,
    ConfigError,
    EagerKernel,
    GroupedKernel,
    SDPAKernel,
    auto_attention_kernel,
    set_attention_kernel,
    soft_cap,
)

README = Path(__file__).parents[1] / "README.md"
N_H, N_KV, H_D = 6, 2, 12  # GQA 3:1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _signature(fn: Callable[[], Any]) -> str:
    """Which kernel ran inside ``fn``, from the ops the profiler saw."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    sdpa = any("scaled_dot_product" in n for n in names)
    products = any(n == "aten::baddbmm" for n in names)
    expanded = any(n == "aten::repeat_interleave" for n in names)
    if sdpa and not products:
        return "sdpa"
    if products and not sdpa and not expanded:
        return "grouped"
    if expanded and not sdpa and not products:
        return "eager"
    return f"unclear (sdpa={sdpa}, baddbmm={products}, repeat_interleave={expanded})"


def _call(
    kernel: Callable[..., torch.Tensor], dtype: torch.dtype, grad: bool, s: int, t: int
) -> Callable[[], None]:
    """One attention call (and its backward when ``grad``) of ``s`` queries over ``t`` keys."""
    g = torch.Generator().manual_seed(s * 7 + t)
    q = torch.randn(2, N_H, s, H_D, generator=g).to(dtype).requires_grad_(grad)
    k = torch.randn(2, N_KV, t, H_D, generator=g).to(dtype).requires_grad_(grad)
    v = torch.randn(2, N_KV, t, H_D, generator=g).to(dtype).requires_grad_(grad)
    # The boolean key mask of a cached forward: the s new tokens are the last s of t slots.
    mask = AttentionMask.for_cache(torch.ones(2, s, dtype=torch.bool), torch.ones(2, t, dtype=torch.bool))
    dense = mask.dense()

    def run() -> None:
        with torch.set_grad_enabled(grad):
            out = kernel(q, k, v, dense, H_D**-0.5)
            if grad:
                out.float().sum().backward()

    return run


def _readme_rule() -> list[dict[str, str]]:
    """The ``auto`` table of the README: one dict per row (device, dtype, gradients, queries, keys, kernel)."""
    text = README.read_text()
    start = text.index("| device | dtype | gradients | queries | keys | kernel |")
    lines = text[start:].split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    assert len(rows) >= 5, rows
    return rows


def _matches(column: str, cell: str, value: Any) -> bool:
    """Whether a README cell (``any``, ``fp32, fp16``, ``yes``, ``1``, ``> 1``, ``<= 1024``) covers ``value``."""
    if cell == "any":
        return True
    if column == "dtype":
        return value in [DTYPES[c.strip()] for c in cell.split(",")]
    if column == "gradients":
        return value == (cell == "yes")
    if column in ("queries", "keys"):
        m = re.fullmatch(r"(<=|>)?\s*(\d+)", cell)
        assert m, cell
        n = int(m.group(2))
        return {"<=": value <= n, ">": value > n, None: value == n}[m.group(1)]
    return bool(value == cell)


# Every combination the table must decide: both sides of each boundary it names.
GRID = list(
    itertools.product(
        ("cpu", "cuda"), DTYPES.values(), (True, False), (1, 2, 13), (1, 2, 13, 512, 1023, 1024, 1025, 2048)
    )
)


def test_readme_rule_is_what_auto_runs() -> None:
    """Every combination: exactly one README row covers it, the rule function agrees with that row, and
    on CPU the profiler sees that kernel run (one call per distinct rule cell)."""
    rows = _readme_rule()
    columns = ("device", "dtype", "gradients", "queries", "keys")
    profiled = set()
    for point in GRID:
        device, dtype, grad, s, t = point
        if s > t:  # queries are the last s of t keys
            continue
        covering = [r for r in rows if all(_matches(c, r[c], v) for c, v in zip(columns, point, strict=True))]
        assert len(covering) == 1, (point, covering)
        documented = covering[0]["kernel"]
        kernel, reason = auto_attention_kernel(device, dtype, grad=grad, num_queries=s, num_keys=t)
        assert (kernel, bool(reason)) == (documented, True), (point, kernel)
        cell = (device, dtype, grad, s == 1, t > ft_models.GROUPED_MAX_KEYS)
        if device == "cpu" and cell not in profiled:
            profiled.add(cell)
            ran = _signature(_call(AutoKernel(), dtype, grad, s, t))
            assert ran == documented, (point, ran)
    assert len(profiled) >= 16


def test_each_named_kernel_runs_for_every_call() -> None:
    """``sdpa`` / ``grouped`` / ``eager`` run their kernel whatever the call; the signatures differ."""
    for name in ("sdpa", "grouped", "eager"):
        kernel = ft_models.attention_kernel(name)
        for dtype, grad in ((torch.bfloat16, True), (torch.float32, False)):
            assert _signature(_call(kernel, dtype, grad, 13, 13)) == name, (name, dtype, grad)
    # Negative control: the call auto sends to the grouped products stays on SDPA under SDPAKernel
    # (no hidden rerouting inside the kernel), and grouped is not what SDPA looks like.
    assert _signature(_call(AutoKernel(), torch.bfloat16, True, 13, 13)) == "grouped"
    assert _signature(_call(SDPAKernel(), torch.bfloat16, True, 13, 13)) == "sdpa"


def test_auto_routes_the_same_when_compiled() -> None:
    torch._dynamo.reset()
    kernel = AutoKernel()
    compiled = torch.compile(lambda q, k, v, m, s: kernel(q, k, v, m, s), fullgraph=True)
    for dtype, grad, expected in ((torch.bfloat16, True, "grouped"), (torch.bfloat16, False, "sdpa")):
        run = _call(compiled, dtype, grad, 13, 13)
        run()  # compile outside the profiled call
        assert _signature(run) == expected, (dtype, grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_is_sdpa_on_cuda_in_bf16_training() -> None:
    q = torch.randn(2, N_H, 64, H_D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, N_KV, 64, H_D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        AutoKernel()(q, k, k, None, H_D**-0.5).sum().backward()
    names = [e.name for e in prof.events()]
    assert any("scaled_dot_product" in n for n in names)
    assert not any(n == "aten::baddbmm" for n in names)


def _tiny(model_type: str = "llama", std: float = 0.02, **extra: Any) -> ft_models.CausalLM:
    config = ft_models.DecoderConfig.from_hf_dict(
        {"model_type": model_type, "vocab_size": 97, "hidden_size": 48, "intermediate_size": 64,
         "num_hidden_layers": 3, "num_attention_heads": N_H, "num_key_value_heads": N_KV, "head_dim": H_D,
         "max_position_embeddings": 64, **extra}
    )  # fmt: skip
    model = ft_models.build_model(config)
    model.reset_parameters(std)
    return model


def _kernels(model: ft_models.CausalLM) -> list[Any]:
    return [layer.self_attn.kernel for layer in model.model.layers]


@pytest.mark.parametrize("name", ATTENTION_KERNELS)
def test_set_attention_kernel_sets_every_layer_and_the_model_runs_it(name: str) -> None:
    model = _tiny().to(torch.bfloat16)
    assert all(type(k) is SDPAKernel for k in _kernels(model))  # builders' default
    assert set_attention_kernel(model, name) == 3
    expected = {"auto": AutoKernel, "sdpa": SDPAKernel, "grouped": GroupedKernel, "eager": EagerKernel}[name]
    assert all(type(k) is expected for k in _kernels(model))
    ids = torch.randint(0, 97, (2, 11))

    def train_step() -> None:
        model(ids).float().sum().backward()

    assert _signature(train_step) == {"auto": "grouped"}.get(name, name)


def test_score_modifying_layers_keep_their_cap_or_refuse() -> None:
    model = _tiny("gemma2", 0.3, attn_logit_softcapping=5.0, final_logit_softcapping=None, sliding_window=4)
    before = _kernels(model)
    assert all(isinstance(k, EagerKernel) and k.score_mod is not None for k in before)
    for name in ("sdpa", "grouped"):
        with pytest.raises(
            ConfigError, match=rf"attention: '{name}' cannot modify .*soft_cap\(5.0\).*model\.layers\.0"
        ):
            set_attention_kernel(model, name)
        assert _kernels(model) == before  # nothing changed on refusal
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        reference = model(ids)
        for name in ("auto", "eager"):
            set_attention_kernel(model, name)
            assert all(repr(k.score_mod) == "soft_cap(5.0)" for k in _kernels(model))
            torch.testing.assert_close(model(ids), reference, rtol=0, atol=0)
        # Wrong variant: the cap dropped (what an unchecked `sdpa` would have run) changes the logits.
        for layer in model.model.layers:
            layer.self_attn.kernel = SDPAKernel()
        assert (model(ids) - reference).abs().max() > 1e-3


def test_bad_names_and_models_are_config_errors() -> None:
    model = _tiny()
    with pytest.raises(ConfigError, match=r"attention: unknown kernel 'flash'; expected one of auto, sdpa"):
        set_attention_kernel(model, "flash")
    assert all(type(k) is SDPAKernel for k in _kernels(model))
    with pytest.raises(ConfigError, match="has no attention modules"):
        set_attention_kernel(torch.nn.Linear(2, 2), "auto")
    assert isinstance(ft_models.attention_kernel("eager", soft_cap(3.0)), EagerKernel)
