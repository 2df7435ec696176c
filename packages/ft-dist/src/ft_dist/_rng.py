"""Random-generator states as plain tensors, for a per-rank sidecar loaded with ``weights_only=True``.

Every generator a training step may draw from is captured: torch's CPU generator, each CUDA device's
generator, Python's ``random`` (Mersenne Twister: version, 625 words, cached Gaussian) and NumPy's
legacy global generator when NumPy is installed. Python and NumPy states are encoded as integer and
float tensors, never pickled objects, so loading them cannot execute code.
"""

from __future__ import annotations

import random

import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> dict[str, torch.Tensor]:
    """The current state of every generator, as tensors (keys ``torch``, ``cuda.{i}``, ``python.*``,
    ``numpy.*``)."""
    state: dict[str, torch.Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda.{i}"] = s
    version, words, gauss = random.getstate()
    state["python.words"] = torch.tensor([version, *words], dtype=torch.int64)  # [626]
    state["python.gauss"] = torch.tensor([0.0 if gauss is None else 1.0, gauss or 0.0], dtype=torch.float64)
    try:
        import numpy as np
    except ImportError:
        return state
    _name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())  # [624]
    state["numpy.meta"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    state["numpy.gauss"] = torch.tensor([cached], dtype=torch.float64)
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore generators from :func:`rng_state`'s tensors (keys that are absent are left alone).

    CUDA states are restored for the devices present, in order; a checkpoint from a machine with more
    devices restores only as many as exist here.
    """
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    cuda = [state[f"cuda.{i}"] for i in range(len(state)) if f"cuda.{i}" in state]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python.words" in state:
        words = [int(w) for w in state["python.words"].tolist()]
        flag, value = state["python.gauss"].tolist()
        random.setstate((words[0], tuple(words[1:]), value if flag else None))
    if "numpy.keys" in state:
        try:
            import numpy as np
        except ImportError:
            return
        pos, has_gauss = (int(v) for v in state["numpy.meta"].tolist())
        keys = state["numpy.keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy.gauss"].item())))
