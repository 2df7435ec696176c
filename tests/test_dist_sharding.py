"""FSDP2 / HSDP with ft_dist.shard_model equals one process: gradients, parameters, accumulation, bf16-mixed.

Four gloo processes on CPU (``dist_worker.run``) train a tiny ft model, full and with LoRA, DoRA and
QLoRA adapters, sharded over two ranks, four ranks and 2 x 2 (HSDP), on a global batch whose rows
train different numbers of tokens, so every rank's share of the trained tokens differs. This process
runs the same steps without any process group. Gradients after one step and parameters after three
fused-AdamW steps agree within 1e-6 in fp32; AdamW is nearly blind to a gradient's scale, so the two
classic wrong reductions (the average of per-rank mean losses, and FSDP's division turned off on the
root module only) are shown to fail on the gradients, by a margin.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import dist_worker
import pytest
import torch
import torch.multiprocessing as mp

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TOL = 1e-6


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sharded")
    context = mp.spawn(dist_worker.run, args=(4, str(root)), nprocs=4, join=False)
    deadline = time.monotonic() + 900
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the sharded ranks did not finish")
    return torch.load(Path(root) / "results.pt", weights_only=True)


@functools.cache
def _reference(method: str, accumulation: int = 1, chunk_size: int | None = None) -> dict[str, Any]:
    return dist_worker.reference(method, accumulation=accumulation, chunk_size=chunk_size)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _norm_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([(a[k].float() - b[k].float()).flatten() for k in sorted(a)]).norm())


@pytest.mark.parametrize("topology", dist_worker.TOPOLOGIES)
@pytest.mark.parametrize("method", dist_worker.METHODS)
def test_sharded_training_equals_one_process(sharded: dict[str, Any], method: str, topology: str) -> None:
    got, want = sharded[f"{method}/{topology}"], _reference(method)
    assert got["sharded"], "parameters are not DTensors"
    assert got["fused"], "the recipes' optimizer is fused AdamW"
    assert _max_diff(got["grads"], want["grads"]) <= TOL
    assert _max_diff(got["params"], want["params"]) <= TOL
    torch.testing.assert_close(torch.stack(got["loss"]), torch.stack(want["loss"]), atol=TOL, rtol=0)
    # The steps moved the parameters far more than the tolerance: the comparison can see a difference.
    start = dist_worker.params(dist_worker.build(method))
    assert _max_diff(want["params"], start) > 1000 * TOL


def test_ranks_times_accumulation_steps_agree(sharded: dict[str, Any]) -> None:
    """1 rank x 4 micro-batches = 2 ranks x 2 = 4 ranks x 1, on the same global batch."""
    one_by_four = _reference("full", accumulation=4)
    for got in (sharded["full/2x2"], sharded["full/fsdp4"]):
        assert _max_diff(got["grads"], one_by_four["grads"]) <= TOL
        assert _max_diff(got["params"], one_by_four["params"]) <= TOL
    assert _max_diff(_reference("full")["grads"], one_by_four["grads"]) <= TOL
    # No reduction before the window's last micro-batch; the check sees one when the sync stays on.
    assert not sharded["full/2x2"]["reduced_early"]
    assert sharded["full/2x2/sync_every"]["reduced_early"]
    assert _max_diff(sharded["full/2x2/sync_every"]["grads"], one_by_four["grads"]) <= TOL


@pytest.mark.parametrize("method", ["full", "lora"])
def test_chunked_loss_calls_the_sharded_head_outside_the_forward(
    sharded: dict[str, Any], method: str
) -> None:
    """HSDP, two micro-batches, the output projection in chunks of 3 positions (tied head for full)."""
    got, want = sharded[f"chunked/{method}"], _reference(method, accumulation=2, chunk_size=3)
    assert _max_diff(got["grads"], want["grads"]) <= TOL
    assert _max_diff(got["params"], want["params"]) <= TOL
    assert _max_diff(want["grads"], _reference(method)["grads"]) <= TOL


@pytest.mark.parametrize("topology", ["fsdp4", "hsdp"])
@pytest.mark.parametrize("variant", ["rank_mean", "root_only"])
def test_wrong_reductions_fail_by_a_margin(sharded: dict[str, Any], variant: str, topology: str) -> None:
    want = _reference("full")["grads"]
    scale = max(float(g.abs().max()) for g in want.values())
    assert _max_diff(sharded[f"wrong/{variant}/{topology}"]["grads"], want) > 1e-2 * scale


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_mixed_sharded_matches_single_device_bf16_mixed(sharded: dict[str, Any], method: str) -> None:
    got, single, fp32 = sharded[f"bf16/{method}"], dist_worker.reference_bf16(method), _reference(method)
    assert abs(float(got["loss"][0]) - float(single["loss"][0])) <= 1e-5
    assert abs(float(single["loss"][0]) - float(fp32["loss"][0])) > 1e-5  # bf16 really computed
    to_each_other = _norm_diff(got["grads"], single["grads"])
    assert to_each_other < _norm_diff(single["grads"], fp32["grads"])
    assert to_each_other < _norm_diff(got["grads"], fp32["grads"])


@pytest.mark.parametrize("topology", ["fsdp4", "hsdp"])
def test_clip_grad_norm_over_sharded_and_replicated_gradients(sharded: dict[str, Any], topology: str) -> None:
    got = sharded[f"clip/{topology}"]
    model = dist_worker.build("full")
    batches = dist_worker.micro_batches(dist_worker.global_batch(0), 0, 1, 1)
    dist_worker.window(model, batches, dist_worker.trained_tokens(batches))
    extra = torch.nn.Parameter(torch.zeros(7))
    extra.grad = torch.linspace(-0.3, 0.4, 7)
    norm = torch.nn.utils.clip_grad_norm_([*model.parameters(), extra], dist_worker.CLIP)
    assert norm > 2 * dist_worker.CLIP  # clipping really scales
    torch.testing.assert_close(got["norm"], norm, atol=0, rtol=1e-6)
    assert _max_diff(got["grads"], dist_worker.grads(model)) <= TOL
    torch.testing.assert_close(got["extra"], extra.grad, atol=TOL, rtol=0)
    assert float(got["naive"]) < 0.9 * float(norm)  # a rank's local norm alone is not the norm


def test_checkpointed_compiled_blocks_shard_and_match_eager(sharded: dict[str, Any]) -> None:
    got = sharded["compiled"]
    assert got["frames"] > 0, "no block ran compiled"
    assert _max_diff(got["grads"], _reference("full")["grads"]) <= TOL
