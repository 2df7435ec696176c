"""`ft_recipes.training.compile_blocks`: per-block torch.compile keeps the state-dict keys and the numerics.

A tiny Llama (vocab 97, GQA 5:1, head_dim 12 != 40 / 5) written by transformers and loaded by ft-models.
The compiled model's state-dict keys equal the eager model's (no `_orig_mod.`), its loss and every
gradient equal eager within a float tolerance (inductor fuses and reorders float ops, so not bit for
bit), and the blocks really run compiled. The wrong variant, `torch.compile(model)` on the whole model,
is shown to rename every key.

Compile with activation checkpointing, under bf16-mixed and on packed rows of changing layouts, compiles
exactly the graphs compile alone does (dynamo's counters: graphs, graph breaks), with the checkpointed
region and the packed-row attention operator inside the graph. Two wrong variants are shown to fail
that count: a mask that builds and caches its dense form inside the layers (the side effect dynamo
refuses inside a checkpoint), and the bf16 cast done by assigning the unit's ``_parameters``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM

import ft_dist
import ft_models
from ft_recipes.training import (
    apply_precision,
    compile_blocks,
    linear_cross_entropy,
    resolve_precision,
)


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
    """Loss and every parameter gradient of one batch; the output (final hidden states) is in the grads'
    ``"hidden"`` entry."""
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
    return loss.detach(), {
        "hidden": hidden.detach(),
        **{n: p.grad.clone() for n, p in model.named_parameters()},
    }


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


@pytest.mark.slow  # three `tune run` processes, one of them compiling with inductor
def test_checkpoint_saved_with_compile_resumes_without(tmp_path: Path) -> None:
    """A checkpoint written by a `compile: true` run loads every key into an eager run, bit for bit.

    Run 1 (compiled) stops after its step-2 checkpoint and writes `model/` from its weights. Run 2 resumes
    with `compile: false` and has no step left, so its `model/` is the checkpoint's weights as loaded
    (the full recipe loads strictly: a missing or unexpected key is an error): it must equal run 1's
    bytes. Run 3 resumes eagerly and trains on to step 4. Compiled and eager kernels round differently,
    so the honest claim is exact loading, not equal losses after resume.
    """
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file
    from test_recipe_support import make_tiny

    model_dir, data = make_tiny(tmp_path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"output_dir: {tmp_path / 'out'}\ndevice: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\n"
        "epochs: 10\noptimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\ncheckpoint: {every_n_steps: 2}\n"
    )

    def tune(*overrides: str) -> None:
        cmd = [str(Path(sys.executable).parent / "tune"), "run", "full_finetune_single_device"]
        done = subprocess.run(
            [*cmd, "--config", str(cfg), *overrides],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    tune("compile=true", "max_steps=2")
    compiled = load_file(out / "model" / "model.safetensors")
    tune("compile=false", "max_steps=2", "resume=auto")
    loaded = load_file(out / "model" / "model.safetensors")
    assert compiled.keys() == loaded.keys()
    assert not any("_orig_mod" in k for k in loaded)
    assert all(torch.equal(compiled[k], loaded[k]) for k in compiled)

    tune("compile=false", "max_steps=4", "resume=auto")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in records)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]


# Two packed layouts of [2, 16] (documents and padding): the second must reuse the first one's graphs.
LAYOUTS = [
    torch.tensor([[0] * 5 + [1] * 11, [0] * 12 + [-1] * 4]),
    torch.tensor([[0] * 2 + [1] * 3 + [2] * 11, [4] * 9 + [-1] * 7]),
]


class _LazyMask(ft_models.AttentionMask):
    """Wrong variant: the dense mask built by the first layer that needs it and cached on the mask."""

    def attend(self, q: Any, k: Any, v: Any, kernel: Any, window: Any, scale: float) -> torch.Tensor:
        cache = self.prepared
        if window not in cache:
            cache[window] = self._build(window)  # type: ignore[index]  # a write inside the layer
        return kernel(q, k, v, cache[window], scale)


def _lazy_forward(model: ft_models.CausalLM, ids: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    mask = _LazyMask(ids.shape[1], ids.shape[1], docs, docs, ids.device, {})
    rope = model.model.rotary_emb(ft_models.positions_from_documents(docs))
    return model.model.forward_prepared(ids, rope, mask)


def _mutating_cast(
    forward: Callable[..., Any], unit: torch.nn.Module, dtype: torch.dtype, *a: Any, **k: Any
) -> Any:
    """Wrong variant: the bf16 copies assigned into each module's ``_parameters`` and restored after."""
    slots = [(m, n) for m in unit.modules() for n, p in m._parameters.items() if p is not None]
    originals = [m._parameters[n] for m, n in slots]
    try:
        for (m, n), p in zip(slots, originals, strict=True):
            if p is not None and p.is_floating_point() and p.dtype != dtype:
                m._parameters[n] = p.to(dtype)  # type: ignore[assignment]
        return forward(*a, **k)
    finally:
        for (m, n), p in zip(slots, originals, strict=True):
            m._parameters[n] = p


def _install_mutating_cast(model: torch.nn.Module) -> int:
    """Swap the policy's per-unit cast (a ``functools.partial`` on each unit's ``forward``) for
    :func:`_mutating_cast` with the same arguments; returns how many units were swapped."""
    swapped = 0
    for unit in model.modules():
        wrapped = vars(unit).get("forward")
        if isinstance(wrapped, functools.partial):
            unit.forward = functools.partial(_mutating_cast, *wrapped.args)  # type: ignore[method-assign]
            swapped += 1
    return swapped


def _compiled(
    tiny: ft_models.CausalLM,
    *,
    ac: bool,
    forward: Callable[..., torch.Tensor] | None = None,
    mutating_cast: bool = False,
) -> tuple[dict[str, int], list[torch.fx.GraphModule], list[torch.Tensor], ft_models.CausalLM]:
    """bf16-mixed, optionally checkpointed, blocks compiled; forward + backward on both layouts.

    Returns dynamo's graph and graph-break counts, the graphs dynamo produced, the losses and the
    model (its gradients accumulated over both layouts).
    """
    model = copy.deepcopy(tiny)
    apply_precision(model, resolve_precision("bf16-mixed", "cpu"))
    if mutating_cast:
        assert _install_mutating_cast(model) > 0
    if ac:
        ft_dist.apply_activation_checkpointing(model)
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)  # type: ignore[no-any-return]

    compile_blocks(model, backend=backend)
    torch._dynamo.reset()
    counters.clear()
    losses = []
    for docs in LAYOUTS:
        ids = torch.randint(0, 97, docs.shape, generator=torch.Generator().manual_seed(len(losses)))
        hidden = (
            forward(model, ids, docs)
            if forward is not None
            else model(ids, document_ids=docs, return_hidden=True)
        )
        loss = hidden.float().square().mean()
        loss.backward()
        losses.append(loss.detach())
    count = {
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": sum(counters["graph_break"].values()),
    }
    return count, graphs, losses, model


def _ops(gm: torch.fx.GraphModule) -> set[str]:
    """Every call target in ``gm`` and its submodules (a checkpointed region is a submodule)."""
    found = set()
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            found.update(str(node.target) for node in module.graph.nodes if node.op == "call_function")
    return found


def test_compile_with_activation_checkpointing_compiles_what_compile_alone_does(
    tiny: ft_models.CausalLM,
) -> None:
    alone, alone_graphs, alone_losses, _ = _compiled(tiny, ac=False)
    with_ac, ac_graphs, ac_losses, ac_model = _compiled(tiny, ac=True)
    assert alone == with_ac == {"graphs": 1, "breaks": 0}  # one graph for both layouts and every block
    assert "ft_models.segment_attention.default" in _ops(alone_graphs[0])
    ops = _ops(ac_graphs[0])
    assert "tag_activation_checkpoint" in ops  # the checkpointed region is inside the compiled graph
    assert "ft_models.segment_attention.default" in ops
    for a, b in zip(alone_losses, ac_losses, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same kernels, recomputation is exact
    eager = copy.deepcopy(tiny)
    apply_precision(eager, resolve_precision("bf16-mixed", "cpu"))
    for i, (docs, loss) in enumerate(zip(LAYOUTS, alone_losses, strict=True)):
        ids = torch.randint(0, 97, docs.shape, generator=torch.Generator().manual_seed(i))
        expected = eager(ids, document_ids=docs, return_hidden=True).float().square().mean()
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-6, atol=0)  # observed: identical
    for (name, p), q in zip(eager.named_parameters(), ac_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_mask_written_inside_the_checkpoint_breaks_the_compiled_graph(tiny: ft_models.CausalLM) -> None:
    """Wrong variant: the old lazily cached mask. Alone it compiles; inside a checkpoint it cannot."""
    alone, _, _, _ = _compiled(tiny, ac=False, forward=_lazy_forward)
    with_ac, _, _, _ = _compiled(tiny, ac=True, forward=_lazy_forward)
    assert alone["breaks"] == 0
    assert alone["graphs"] >= 1
    assert with_ac != alone
    assert with_ac["breaks"] > 0


def test_a_cast_that_assigns_parameters_breaks_the_compiled_graph(tiny: ft_models.CausalLM) -> None:
    """Wrong variant: the bf16-mixed cast done by assigning ``_parameters`` inside the checkpoint."""
    alone, _, _, _ = _compiled(tiny, ac=False, mutating_cast=True)
    with_ac, _, _, _ = _compiled(tiny, ac=True, mutating_cast=True)
    assert alone == {"graphs": 1, "breaks": 0}
    assert with_ac["breaks"] > 0
    assert with_ac != alone
