"""Attention kernels: the SDPA fast path, the mask hand-off, and the eager kernel's score modifier."""

from __future__ import annotations

import torch
from llama_support import make_hf
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager

import ft_models
from ft_models import AttentionMask, EagerKernel, SDPAKernel, soft_cap


class RecordingKernel:
    """SDPA that records the mask each call receives (a kernel plugged in from outside)."""

    def __init__(self) -> None:
        self.masks: list[torch.Tensor | None] = []
        self.calls: list[tuple[int, int]] = []  # (sequences, queries) per call
        self.inner = SDPAKernel()

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        self.masks.append(mask)
        self.calls.append((q.shape[0], q.shape[2]))
        return self.inner(q, k, v, mask, scale)


@torch.no_grad()
def test_fast_path_gets_no_mask_and_other_paths_a_boolean_one() -> None:
    hf = make_hf("gqa4", tie=False, seed=9)
    kernel = RecordingKernel()
    model = ft_models.build_llama(
        ft_models.DecoderConfig.from_hf_dict(hf.config.to_dict()), kernel=kernel
    ).eval()
    model.load_state_dict(hf.state_dict())
    ids = torch.randint(0, 97, (2, 10))
    model(ids)
    assert kernel.masks == [None] * 3  # is_causal=True, no mask materialised
    kernel.masks.clear()
    model(ids, document_ids=torch.zeros(2, 10, dtype=torch.long))  # one document per row: still fast
    assert kernel.masks == [None] * 3
    kernel.masks.clear()
    kernel.calls.clear()
    # Packed row 0 (4 + 6 tokens), row 1 one 10-token document: each document on its own causal path,
    # documents of one length in one call, no [b, 1, s, s] mask.
    model(ids, document_ids=torch.tensor([[0] * 4 + [1] * 6, [0] * 10]))
    assert kernel.masks == [None] * 9
    assert kernel.calls == [(1, 4), (1, 6), (1, 10)] * 3
    kernel.masks.clear()
    kernel.calls.clear()
    model(ids, document_ids=torch.tensor([[0] * 5 + [1] * 5, [7] * 5 + [-1] * 5]))  # equal lengths stack
    assert kernel.masks == [None] * 3
    assert kernel.calls == [(3, 5)] * 3
    kernel.masks.clear()
    model(ids, document_ids=torch.tensor([[0] * 3 + [1] * 4 + [0] * 3, [0] * 10]))  # document 0 split
    assert all(m is not None and m.dtype == torch.bool and m.shape == (2, 1, 10, 10) for m in kernel.masks)
    kernel.masks.clear()
    cache = model.new_cache(2, 12)
    model(ids, cache=cache)
    model(ids[:, :1], cache=cache)
    assert [tuple(m.shape) for m in kernel.masks if m is not None][-1] == (2, 1, 1, 11)


def test_eager_soft_cap_matches_gemma2_reference() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 9, 16, generator=g) * 4  # large scores so the cap matters
    k = torch.randn(2, 2, 9, 16, generator=g) * 4
    v = torch.randn(2, 2, 9, 16, generator=g)
    docs = torch.tensor([[0] * 4 + [1] * 5, [-1] * 2 + [0] * 7])
    mask = AttentionMask.for_sequence(9, docs, q.device).dense()
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)

    class Module(torch.nn.Module):
        head_dim, num_key_value_groups = 16, 3

    expected, _ = gemma2_eager(Module().eval(), q, k, v, additive, scaling=0.25, softcap=5.0)
    got = EagerKernel(score_mod=soft_cap(5.0))(q, k, v, mask, 0.25).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    uncapped = EagerKernel()(q, k, v, mask, 0.25).transpose(1, 2)  # wrong variant: no cap
    assert not torch.allclose(uncapped, expected, rtol=0, atol=1e-6)
    sdpa = SDPAKernel()(q, k, v, mask, 0.25)  # and the two kernels agree without a modifier
    torch.testing.assert_close(sdpa, uncapped.transpose(1, 2), rtol=0, atol=1e-5)
