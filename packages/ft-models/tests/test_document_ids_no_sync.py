"""The decoder reads ``document_ids`` values only on a CPU: on an accelerator that read would wait for it.

A meta tensor has no values at all (``bool()`` of one raises), so it stands for any non-CPU device: the
decoder must hand it on as is. The caller states single-document rows with ``document_ids=None``.
"""

from __future__ import annotations

import pytest
import torch

from ft_models._decoder import _unless_one_document


def test_non_cpu_ids_are_handed_on_unread() -> None:
    ids = torch.zeros(2, 7, dtype=torch.long, device="meta")
    assert _unless_one_document(ids) is ids
    # Wrong variant: the inspection a CPU tensor gets cannot be made on a tensor without values.
    with pytest.raises(RuntimeError):
        bool(((ids == ids[:, :1]) & (ids >= 0)).all())


def test_cpu_ids_still_take_the_causal_fast_path() -> None:
    one = torch.tensor([[3] * 6, [0] * 6])
    assert _unless_one_document(one) is None
    packed = torch.tensor([[0, 0, 1, 1, 1, 1], [0] * 6])
    assert _unless_one_document(packed) is packed
    assert _unless_one_document(None) is None
