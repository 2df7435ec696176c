"""``peak_memory_mib`` describes training: the peak is reset when the loop starts, after setup's is read."""

from __future__ import annotations

import sys

import pytest
import torch

from ft_recipes._memory import peak_memory_mib, reset_peak_memory

CPU = torch.device("cpu")
BIG = 384 * 2**20  # bytes: well above the noise of a test process's resident set


def _spike() -> None:
    x = torch.ones(BIG // 4)  # touched, so resident
    del x


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU peak is resettable on Linux only")
def test_cpu_peak_restarts_at_the_reset() -> None:
    assert reset_peak_memory(CPU)
    _spike()
    with_spike = peak_memory_mib(CPU)
    assert reset_peak_memory(CPU)
    after = peak_memory_mib(CPU)
    assert after < with_spike - 0.75 * BIG / 2**20, (after, with_spike)
    # Wrong variant: without the reset the figure still holds the spike (what setup's peak would do).
    _spike()
    assert peak_memory_mib(CPU) >= after + 0.75 * BIG / 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_restarts_at_the_reset() -> None:
    cuda = torch.device("cuda")
    x = torch.ones(BIG // 4, device=cuda)
    del x
    with_spike = peak_memory_mib(cuda)
    assert reset_peak_memory(cuda)
    assert peak_memory_mib(cuda) < with_spike - 0.75 * BIG / 2**20
