"""A sharded run's model streams straight into this rank's shards (the loader's placement seam), and
sharding adopts them: checked in one process on a one-rank gloo mesh against the whole-model path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import LlamaConfig, LlamaForCausalLM

import ft_dist
from ft_recipes import _distributed
from ft_recipes._setup import load_model


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_distributed.World]:
    rendezvous = tmp_path_factory.mktemp("pg") / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    try:
        launch = ft_dist.Launch(0, 1, 0, 1, torch.device("cpu"))
        yield _distributed.World(launch, init_device_mesh("cpu", (1,)))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    cfg = LlamaConfig(
        vocab_size=37,
        hidden_size=20,
        intermediate_size=28,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=4,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root)
    return root


def test_placed_load_holds_only_shards_and_sharding_adopts_them(
    world: _distributed.World, model_dir: Path
) -> None:
    node = {"_component_": "from_pretrained", "path": str(model_dir)}
    tokenizer = SimpleNamespace(vocab_size=37)
    device = torch.device("cpu")
    placed = load_model(node, tokenizer, device, shard=_distributed.placement(world))
    whole = load_model(node, tokenizer, device)
    params = dict(placed.named_parameters())
    assert all(isinstance(p, DTensor) for p in params.values())  # no rank held a whole parameter
    assert not any(isinstance(b, DTensor) for b in placed.buffers())  # RoPE tables stay whole
    assert placed.lm_head.weight is placed.model.embed_tokens.weight  # still tied
    before = {id(p) for p in placed.parameters()}
    _distributed.shard(placed, world, None, False)
    _distributed.shard(whole, world, None, False)
    assert {id(p) for p in placed.parameters()} == before  # adopted as they are
    ids = torch.randint(0, 37, (2, 9))
    torch.testing.assert_close(placed(ids), whole(ids), rtol=0, atol=0)
    # The comparison can fail: with one weight changed the logits differ.
    with torch.no_grad():
        whole.model.norm.weight.mul_(1.5)
    assert not torch.equal(placed(ids), whole(ids))


def test_one_process_has_no_placement() -> None:
    launch = ft_dist.Launch(0, 1, 0, 1, torch.device("cpu"))
    assert _distributed.placement(_distributed.World(launch)) is None
