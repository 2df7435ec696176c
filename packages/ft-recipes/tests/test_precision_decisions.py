"""``precision: auto`` and ``tf32`` as decisions on stated device facts: every GPU generation without one.

The facts below are what ``torch.cuda`` reports on each card: a T4 (sm_75) and a V100 (sm_70) hold bf16
tensors but emulate the arithmetic (``is_bf16_supported(including_emulation=False)`` is False, with
emulation True), an A100 / H100 (sm_80 / sm_90) has bf16 and TF32 tensor cores.
"""

from __future__ import annotations

import pytest
import torch

from ft_recipes.training import (
    DeviceFacts,
    PrecisionError,
    apply_tf32,
    choose_inference_precision,
    choose_precision,
    choose_tf32,
    device_facts,
)

A100 = DeviceFacts("cuda", "NVIDIA A100-SXM4-80GB", native_bf16=True, tf32=True)
H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", native_bf16=True, tf32=True)
T4 = DeviceFacts("cuda", "Tesla T4", emulated_bf16=True)
V100 = DeviceFacts("cuda", "Tesla V100-SXM2-16GB", emulated_bf16=True)
NO_GPU = DeviceFacts("cuda", "no CUDA device", present=False)
AMX_CPU = DeviceFacts("cpu", "CPU (AVX512)", native_bf16=True)
AVX2_CPU = DeviceFacts("cpu", "CPU (AVX2)")


@pytest.mark.parametrize(
    ("facts", "training", "inference"),
    [
        (A100, "bf16-mixed", "bf16"),
        (H100, "bf16-mixed", "bf16"),
        (T4, "fp16", "fp16"),
        (V100, "fp16", "fp16"),
        (NO_GPU, "fp32", "fp32"),
        (AMX_CPU, "bf16-mixed", "fp32"),
        (AVX2_CPU, "fp32", "fp32"),
    ],
    ids=["a100", "h100", "t4", "v100", "no-gpu", "amx-cpu", "avx2-cpu"],
)
def test_auto_never_picks_emulated_bf16(facts: DeviceFacts, training: str, inference: str) -> None:
    chosen, reason = choose_precision("auto", facts)
    assert chosen == training, reason
    assert reason.startswith(f"auto -> {training}: ")
    assert facts.name in reason
    assert choose_inference_precision("auto", facts)[0] == inference
    if facts.emulated_bf16:
        assert "emulated" in reason
        assert "fp16 with loss scaling" in reason
    # Wrong variant: the emulation-inclusive test (torch.cuda.is_bf16_supported()'s default) calls a
    # T4 a bf16 GPU, and auto would then train it in emulated bf16.
    if facts.emulated_bf16:
        inclusive = DeviceFacts(facts.type, facts.name, native_bf16=True)
        assert choose_precision("auto", inclusive)[0] == "bf16-mixed" != chosen


def test_fp16_policy_carries_the_gradient_scaler() -> None:
    from ft_recipes.training._precision import _POLICIES

    compute, master, frozen, scaler = _POLICIES[choose_precision("auto", T4)[0]]
    assert (compute, master, frozen, scaler) == (torch.float16, torch.float32, torch.float16, True)


def test_explicit_bf16_on_an_emulating_gpu_is_allowed_and_said() -> None:
    chosen, reason = choose_precision("bf16-mixed", V100)
    assert chosen == "bf16-mixed"
    assert "emulated" in reason
    assert "requested" in reason
    assert choose_inference_precision("bf16", T4)[0] == "bf16"
    assert choose_precision("fp32", T4) == ("fp32", "fp32: requested")


@pytest.mark.parametrize("name", ["bf16-mixed", "bf16-pure"])
def test_explicit_bf16_without_any_bf16_is_refused(name: str) -> None:
    old_gpu = DeviceFacts("cuda", "Tesla K80")  # no bf16 even emulated
    with pytest.raises(
        PrecisionError, match=rf"^precision: '{name}' on cuda: CUDA Tesla K80 does not support bf16$"
    ):
        choose_precision(name, old_gpu)
    with pytest.raises(PrecisionError, match=r"^precision: 'bf16' on cuda: no CUDA device is available$"):
        choose_inference_precision("bf16", NO_GPU)
    with pytest.raises(PrecisionError, match=r"^precision: unknown value 'bf16'"):
        choose_precision("bf16", A100)


@pytest.mark.parametrize(
    ("facts", "requested", "setting"),
    [
        (A100, True, True),
        (H100, False, False),
        (T4, True, None),
        (V100, True, None),
        (AMX_CPU, True, None),
        (NO_GPU, True, None),
    ],
    ids=["a100", "h100-off", "t4", "v100", "cpu", "no-gpu"],
)
def test_tf32_only_where_the_gpu_has_it(facts: DeviceFacts, requested: bool, setting: bool | None) -> None:
    got, reason = choose_tf32(requested, facts)
    assert got is setting, reason
    assert reason.startswith("tf32 on" if setting else "tf32 off" if setting is False else "tf32: ")


def test_tf32_on_a_cpu_sets_nothing() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert apply_tf32(True, "cpu").startswith("tf32: no effect on CPU")
    assert apply_tf32(False, "cpu").startswith("tf32: no effect on CPU")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_device_facts_of_this_cpu() -> None:
    facts = device_facts("cpu")
    assert facts.type == "cpu"
    assert facts.present
    assert not facts.emulated_bf16
    assert not facts.tf32
    assert facts.native_bf16 == (
        torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )
    if not torch.cuda.is_available():
        assert device_facts("cuda") == NO_GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_facts_of_this_gpu() -> None:
    facts = device_facts("cuda")
    assert facts.native_bf16 == torch.cuda.is_bf16_supported(including_emulation=False)
    assert facts.tf32 == (torch.cuda.get_device_capability() >= (8, 0))
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        apply_tf32(True, "cuda")
        assert torch.backends.cuda.matmul.allow_tf32 == facts.tf32
        apply_tf32(False, "cuda")
        assert not torch.backends.cuda.matmul.allow_tf32 or not facts.tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
