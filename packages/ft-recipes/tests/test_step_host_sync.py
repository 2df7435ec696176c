"""The training step never waits for the device inside an accumulation window.

CUDA's ``torch.cuda.set_sync_debug_mode`` needs a GPU, so the check is structural and runs on a CPU: a
``__torch_function__`` mode marks every tensor that lives on the step's device (the model's parameters
and buffers, every ``.to(device)`` copy, every tensor created with ``device=``) and everything computed
from them, and records each operation that reads such a tensor's values on the host (``item``,
``bool``, ``float``, ``int``, ``nonzero``, ``tolist``, ``unique``, boolean indexing, ...) together with
every ``backward``. On a GPU each of those reads is a synchronisation. The real ``forward_backward``
runs under it; so do two wrong variants, the step as it was (a ``float(loss)`` per micro-batch) and a
batch moved without ``prepare_batch`` (``nonzero`` and ``bool`` on device tensors).

``prepare_batch`` works out on the CPU batch, before the move, what the model would otherwise read from
the device: the trained positions, whether rows are single documents, and the documents' layout
(``ft_models.DocumentSegments``). Each read is recorded with the ft function that made it.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from test_training_support import LLAMA, tiny_model
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import ft_peft
from ft_recipes import steps
from ft_recipes.training import apply_precision, batch_loss, prepare_batch, resolve_precision

_READS = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.tolist,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.numpy,
    torch.Tensor.cpu,
    torch.Tensor.unique,
    torch.unique,
    torch.argwhere,
    torch.masked_select,
    torch.Tensor.masked_select,
    torch.Tensor.any,  # returns a tensor; listed only when its caller then reads it (below)
}
_READS.discard(torch.Tensor.any)


_TORCH = str(Path(torch.__file__).parent)


def _caller() -> str:
    """The innermost function outside torch and this file: the code that asked for the read."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back  # type: ignore[assignment]
    return frame.f_code.co_name if frame is not None else "?"


class DeviceReads(TorchFunctionMode):
    """Records host reads of device-resident values and backward calls, in order (module docstring)."""

    def __init__(self, device_tensors: list[torch.Tensor]) -> None:
        super().__init__()
        self._on_device: dict[int, weakref.ref[torch.Tensor]] = {}
        self.events: list[str] = []
        for t in device_tensors:
            self._mark(t)

    def _mark(self, t: torch.Tensor) -> None:
        self._on_device[id(t)] = weakref.ref(t)

    def _marked(self, t: torch.Tensor) -> bool:
        ref = self._on_device.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(self._marked(t) for t in inputs)
        if func is torch.Tensor.backward:
            self.events.append("backward")
        elif on_device and func in _READS:
            self.events.append(f"read:{getattr(func, '__name__', func)}@{_caller()}")
        elif on_device and func is torch.Tensor.__getitem__:
            index = args[1] if len(args) > 1 else None
            flat = [i for i in tree_flatten(index)[0] if isinstance(i, torch.Tensor)]
            if any(i.dtype == torch.bool for i in flat):
                self.events.append(f"read:boolean-index@{_caller()}")
        out = func(*args, **kwargs)
        moved = func is torch.Tensor.to and any(
            isinstance(a, torch.device | str) for a in (*args[1:], kwargs.get("device"))
        )
        if on_device or moved or kwargs.get("device") is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._mark(t)
        return out


def _window() -> list[dict[str, torch.Tensor]]:
    """Two CPU micro-batches: packed rows (two documents and padding), then single-document rows."""
    g = torch.Generator().manual_seed(3)
    packed_docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1, -1], [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    plain_docs = torch.zeros(2, 9, dtype=torch.long)
    window = []
    for docs in (packed_docs, plain_docs):
        ids = torch.randint(0, LLAMA["vocab_size"], docs.shape, generator=g)
        labels = torch.randint(0, LLAMA["vocab_size"], docs.shape, generator=g)
        labels[:, :2] = -100
        labels[docs == -1] = -100
        positions = torch.zeros_like(docs)
        for r in range(docs.shape[0]):
            for c in range(1, docs.shape[1]):
                positions[r, c] = positions[r, c - 1] + 1 if docs[r, c] == docs[r, c - 1] else 0
        window.append({"input_ids": ids, "labels": labels, "position_ids": positions, "document_ids": docs})
    return window


def _model(kind: str) -> torch.nn.Module:
    model = tiny_model(LLAMA)
    if kind == "qlora":
        ft_peft.apply_lora(model, ["q_proj", "v_proj", "down_proj"], rank=2, quantize="nf4")
        ft_peft.set_trainable(model)
    apply_precision(model, resolve_precision("bf16-mixed", "cpu"))
    return model.train()


def _device_state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _old_forward_backward(
    model: torch.nn.Module, window: list[dict[str, torch.Tensor]], device: torch.device
) -> float:
    """The step before: each micro-batch moved as is, its loss read back right after its backward."""
    normalizer = sum(int((b["labels"] != -100).sum()) for b in window)
    total = 0.0
    for b in window:
        b = {k: v.to(device) for k, v in b.items()}
        loss = batch_loss(model, b, normalizer=normalizer)
        loss.backward()
        total += float(loss.detach())
    return total


@pytest.mark.parametrize("kind", ["full", "qlora"])
def test_one_read_per_window_after_the_last_backward(kind: str) -> None:
    model = _model(kind)
    window = _window()
    reads = DeviceReads(_device_state(model))
    with reads:
        loss, trained, real = steps.forward_backward(model, window, torch.device("cpu"))
    # Nothing is read inside the window; the window's loss once, after the last backward.
    assert reads.events == ["backward", "backward", "read:__float__@forward_backward"], reads.events
    assert trained == sum(int((b["labels"] != -100).sum()) for b in window)
    assert real == sum(int((b["document_ids"] != -1).sum()) for b in window)

    # The same numbers as the step before (loss and gradients), which read the device every micro-batch.
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    old = DeviceReads(_device_state(model))
    with old:
        old_loss = _old_forward_backward(model, window, torch.device("cpu"))
    assert loss == pytest.approx(old_loss, rel=1e-6, abs=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, atol=1e-6, rtol=1e-5)
    # Wrong variant: the old step reads the device inside the window (nonzero, bool, a float per loss).
    inside = old.events[: len(old.events) - 1 - old.events[::-1].index("backward")]
    assert any(e.startswith("read:") for e in inside), old.events
    assert sum(e.startswith("read:__float__") for e in old.events) == len(window)
    assert "read:nonzero@linear_cross_entropy" in old.events
    assert any(e.endswith("@from_document_ids") for e in inside)  # the model's own look at device ids


def test_prepare_batch_finds_the_flags_on_the_cpu() -> None:
    packed, plain = _window()
    moved = prepare_batch(packed, torch.device("cpu"))
    assert moved["document_ids"] is not None
    assert torch.equal(moved["document_ids"], packed["document_ids"])
    assert torch.equal(moved["trained_index"], (packed["labels"].reshape(-1) != -100).nonzero().squeeze(1))
    moved = prepare_batch(plain, torch.device("cpu"))
    assert moved["document_ids"] is None  # one document per row, no padding: the plain causal path
    # Wrong variant: one padded position makes the rows something else than single documents.
    padded = dict(plain, document_ids=plain["document_ids"].clone())
    padded["document_ids"][1, -1] = -1
    assert prepare_batch(padded, torch.device("cpu"))["document_ids"] is not None
