"""The compiled decode step's CPU reroutes apply on a CPU only, where they were measured to pay off.

On any other device the compiled step is the plain one (cuBLAS's matrix-vector kernels and SDPA's
decode kernels are what the reroutes would replace). A model on the meta device stands for one on a GPU:
the choice is made from where the model lives, before anything runs.
"""

from __future__ import annotations

import pytest
import torch

import ft_models
from ft_models._decode_step import DecodeStep, _forward, _rowwise_forward, uses_cpu_reroutes


@pytest.mark.parametrize(
    ("device", "reroute"),
    [("cpu", True), ("cuda", False), ("cuda:1", False), (torch.device("mps"), False), ("meta", False)],
)
def test_reroutes_only_on_a_cpu(device: str | torch.device, reroute: bool) -> None:
    assert uses_cpu_reroutes(device) is reroute


def _tiny(device: str) -> ft_models.CausalLM:
    config = ft_models.DecoderConfig.from_hf_dict(
        {
            "model_type": "llama",
            "vocab_size": 61,
            "hidden_size": 24,
            "intermediate_size": 40,
            "num_hidden_layers": 1,
            "num_attention_heads": 3,
            "num_key_value_heads": 1,
            "head_dim": 10,
        }
    )
    with torch.device(device):
        return ft_models.build_model(config)


def test_the_step_follows_the_model_device() -> None:
    on_cpu = DecodeStep(_tiny("cpu"), compile=True).fn
    elsewhere = DecodeStep(_tiny("meta"), compile=True).fn
    assert on_cpu._torchdynamo_orig_callable is _rowwise_forward  # type: ignore[attr-defined]
    assert elsewhere._torchdynamo_orig_callable is _forward  # type: ignore[attr-defined]
    # Eager steps are the plain step everywhere; wrong variant: the CPU wrapper is not the plain one.
    assert DecodeStep(_tiny("cpu")).fn is _forward
    assert on_cpu is not elsewhere
