"""Given the documents' layout from the CPU batch, the decoder never reads ``document_ids`` values.

On an accelerator, reading a tensor's values waits for the device. A meta tensor has no values at all
(reading one raises), so it stands for any device tensor: with ``segments`` computed from the CPU copy
(what ft's training step does before moving a batch), building the mask must not touch it.
"""

from __future__ import annotations

import pytest
import torch

import ft_models


def _packed() -> torch.Tensor:
    return torch.tensor([[0, 0, 1, 1, 1, 1, -1], [0, 0, 0, 0, 0, 1, 1]])  # [2, 7]


def test_layout_from_the_cpu_batch_leaves_device_ids_unread() -> None:
    cpu = _packed()
    segments = ft_models.DocumentSegments.from_document_ids(cpu, "cpu")
    on_device = cpu.to("meta")
    mask = ft_models.AttentionMask.for_documents(7, on_device, torch.device("meta"), segments=segments)
    assert mask.segments is segments
    # Wrong variant: without the layout, the decoder has to read the ids themselves.
    with pytest.raises((RuntimeError, NotImplementedError)):
        ft_models.AttentionMask.for_documents(7, on_device, torch.device("meta"))


def test_single_document_rows_need_no_ids() -> None:
    mask = ft_models.AttentionMask.for_documents(7, None, torch.device("meta"))
    assert mask.is_plain_causal()
