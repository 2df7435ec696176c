"""A CPU model's tensors moved into 2 MB pages: same tensors, same values, memory the kernel backs with
transparent huge pages, as Linux itself reports it (``/proc/self/smaps``, ``AnonHugePages``).

The wrong variant is the model as loaded (each tensor in its own allocation): on a machine whose
transparent huge pages are in ``madvise`` mode, none of its per-layer weights is in a huge page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import ft_models
from ft_models._hugepages import _THP_SETTING

# ~3.6 MB of fp32 weights in tensors of 20-770 KB: each far below torch's 2 MB large-page threshold.
CONFIG = ft_models.llama_config(
    "smollm2-135m",
    vocab_size=1001,
    hidden_size=192,
    intermediate_size=328,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=40,
    tie_word_embeddings=True,
    dtype="float32",
)
needs_thp = pytest.mark.skipif(
    not ft_models.huge_pages_available(), reason="transparent huge pages are off or not Linux"
)


def _model() -> ft_models.CausalLM:
    torch.manual_seed(0)
    with torch.device("meta"):
        model = ft_models.build_model(CONFIG)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.tie_weights()
    return model


def _huge_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings that hold at least one huge page."""
    ranges, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            current = (int(head[1], 16), int(head[2], 16))
        elif line.startswith("AnonHugePages:") and int(line.split()[1]) > 0 and current:
            ranges.append(current)
    return ranges


def _weight_bytes_in_huge_pages(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of parameters lying in huge-page mappings, bytes of parameters)."""
    ranges = _huge_mappings()
    inside = total = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n
        if any(lo <= p.data_ptr() and p.data_ptr() + n <= hi for lo, hi in ranges):
            inside += n
    return inside, total


@needs_thp
def test_weights_move_into_huge_pages_unchanged() -> None:
    model = _model()
    params = dict(model.named_parameters())
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inside, total = _weight_bytes_in_huge_pages(model)
    if "[madvise]" in _THP_SETTING.read_text():  # the wrong variant: as loaded, per-layer weights are not
        assert inside < total / 4, (inside, total)

    moved = ft_models.place_in_huge_pages(model)

    assert moved >= total
    inside, total = _weight_bytes_in_huge_pages(model)
    assert inside == total
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    assert all(a is b for a, b in zip(model.parameters(), params.values(), strict=True))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, one tensor
    assert all(p.requires_grad for p in model.parameters())


@needs_thp
def test_moved_weights_train_and_views_keep_sharing() -> None:
    model = _model()
    layer = model.model.layers[0].mlp.up_proj
    layer.register_buffer("first_row", layer.weight.data[0])  # a view sharing the weight's storage
    with torch.inference_mode():  # as generation calls it: the moved tensors must not be inference ones
        ft_models.place_in_huge_pages(model)
    assert not layer.weight.is_inference()
    assert layer.first_row.data_ptr() == layer.weight.data_ptr()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start = layer.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    loss.backward()
    optimizer.step()
    assert not torch.equal(layer.weight, start)
    assert torch.equal(layer.first_row, layer.weight[0])  # the view follows the update: one storage


def test_small_modules_and_other_tensors_stay() -> None:
    small = torch.nn.Linear(8, 8)
    ptr = small.weight.data_ptr()
    assert ft_models.place_in_huge_pages(small) == 0
    assert small.weight.data_ptr() == ptr


@needs_thp
def test_compiled_cpu_decode_step_moves_the_model_once() -> None:
    model = _model()
    ft_models.DecodeStep(model)  # eager: left where it is
    inside, total = _weight_bytes_in_huge_pages(model)
    assert inside < total
    ft_models.DecodeStep(model, compile=True)
    ptrs = [p.data_ptr() for p in model.parameters()]
    inside, total = _weight_bytes_in_huge_pages(model)
    assert inside == total
    ft_models.DecodeStep(model, compile=True)  # a second generation: not moved again
    assert [p.data_ptr() for p in model.parameters()] == ptrs
