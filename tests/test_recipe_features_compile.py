"""`ft_recipes.training.compile_blocks`: per-block torch.compile keeps the state-dict keys and the numerics.

A tiny Llama (vocab 97, GQA 5:1, head_dim 12 != 40 / 5) written by transformers and loaded by ft-models.
The compiled model's state-dict keys equal the eager model's (no `_orig_mod.`), its loss and every
gradient equal eager within a float tolerance (inductor fuses and reorders float ops, so not bit for
bit), and the blocks really run compiled. The wrong variant, `torch.compile(model)` on the whole model,
is shown to rename every key.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ft_models
from ft_recipes.training import compile_blocks, linear_cross_entropy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ft_models.CausalLM:
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=40,
        intermediate_size=56,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=12,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("compile") / "model"
    hf.save_pretrained(path)
    return ft_models.from_pretrained(path, dtype=torch.float32).train()


def _loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 13), generator=g)  # [b, s]
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    docs = torch.zeros_like(ids)
    pos = torch.arange(13).expand(2, -1)
    model.zero_grad(set_to_none=True)
    hidden = model(ids, position_ids=pos, document_ids=docs, return_hidden=True)
    loss = linear_cross_entropy(
        hidden, model.output_projection, labels, normalizer=int((labels != -100).sum())
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_blocks_keep_keys_and_match_eager(tiny: ft_models.CausalLM) -> None:
    torch._dynamo.reset()
    eager = copy.deepcopy(tiny)
    compiled = copy.deepcopy(tiny)
    assert compile_blocks(compiled, backend="aot_eager") == 2
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())

    loss, grads = _loss_and_grads(eager)
    c_loss, c_grads = _loss_and_grads(compiled)
    assert torch.allclose(loss, c_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == c_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], c_grads[name], rtol=1e-4, atol=1e-6), name
    # The blocks really ran through dynamo (a graph was captured), not the eager path.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


@pytest.mark.slow  # inductor generates and builds C++ kernels: ~20 s on a small CPU
def test_compile_with_inductor_matches_eager(tiny: ft_models.CausalLM) -> None:
    """The default backend (what `compile: true` uses): generated kernels, equal within float tolerance."""
    torch._dynamo.reset()
    compiled = copy.deepcopy(tiny)
    compile_blocks(compiled)
    loss, grads = _loss_and_grads(copy.deepcopy(tiny))
    c_loss, c_grads = _loss_and_grads(compiled)
    assert torch.allclose(loss, c_loss, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(grads[n], c_grads[n], rtol=1e-4, atol=1e-5) for n in grads)


def test_whole_model_compile_renames_keys(tiny: ft_models.CausalLM) -> None:
    """Wrong variant: torch.compile(model) prefixes every key, so checkpoints would not load eagerly."""
    whole = torch.compile(copy.deepcopy(tiny))
    keys = list(whole.state_dict())
    assert keys != list(tiny.state_dict())
    assert all(k.startswith("_orig_mod.") for k in keys)
    missing, unexpected = copy.deepcopy(tiny).load_state_dict(whole.state_dict(), strict=False)
    assert missing
    assert unexpected


def test_a_model_without_blocks_is_refused(tmp_path: Path) -> None:
    from ft_recipes.training import TrainingError

    with pytest.raises(TrainingError, match="compile: Linear has no decoder blocks"):
        compile_blocks(torch.nn.Linear(3, 3))
