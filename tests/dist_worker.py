"""The sharded side of tests/test_dist_sharding.py, and the pieces both sides share.

``run`` is the body of each of four gloo processes (started with ``torch.multiprocessing.spawn``). On
one world of four ranks it shards the same tiny ft model three ways: FSDP over ranks {0, 1} (and the
same again on {2, 3}), FSDP over all four, and HSDP 2 x 2; trains it with ft-recipes' loss and fused
AdamW; gathers every gradient and parameter to full tensors; and rank 0 saves them for the test
process, which computes the single-process references itself. Not a test module.

Legend: B rows of the global batch, S sequence length.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import ft_dist
import ft_models
import ft_peft
from ft_recipes.training import (
    apply_precision,
    batch_loss,
    build_optimizer,
    compile_blocks,
    linear_cross_entropy,
    resolve_precision,
)

B, S, VOCAB = 8, 11, 53  # 53 rows: uneven shards (14, 14, 14, 11) on four ranks
STEPS = 3
LR = 2e-3
# AdamW's first update is g / (|g| + eps): with torch's eps 1e-8 a gradient of 2.6e-7 carrying 1e-9 of
# fp32 summation-order noise (any change of reduction order, sharded or not) moves its parameter by
# 3e-6 after three steps. eps 1e-3 keeps the update a smooth function of such gradients, so the 1e-6
# comparison of parameters measures the sharding, while gradients above 1e-3 (nearly all) are still
# normalised as AdamW does.
EPS = 1e-3
METHODS = ("full", "lora", "dora", "qlora")
TIED = {"full": True, "lora": False, "dora": True, "qlora": False}
TOPOLOGIES = ("fsdp2", "fsdp4", "hsdp")
CLIP = 0.5


def build(method: str) -> ft_models.CausalLM:
    """The same model on every call: awkward shapes (head_dim 6 != 20 / 5 heads, one KV head, odd vocab)."""
    cfg = ft_models.llama_config(
        "smollm2-135m",
        hidden_size=20,
        intermediate_size=36,
        num_hidden_layers=2,
        num_attention_heads=5,
        num_key_value_heads=1,
        head_dim=6,
        vocab_size=VOCAB,
        tie_word_embeddings=TIED[method],
    )
    torch.manual_seed(0)
    model = ft_models.build_llama(cfg)
    model.reset_parameters(std=0.3)
    if method != "full":
        quantize = ft_peft.QuantConfig("nf4", compute_dtype=torch.float32) if method == "qlora" else None
        ft_peft.apply_lora(
            model,
            ["q_proj", "v_proj", "down_proj"],
            rank=4,
            alpha=8,
            use_dora=method == "dora",
            quantize=quantize,
        )
        ft_peft.set_trainable(model)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # nonzero B: every adapter tensor gets a gradient from the first step
            for _, p in sorted(model.named_parameters(), key=lambda item: item[0]):
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """``B`` rows whose trained-token counts differ (row i trains about (i + 1) / B of its tokens)."""
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB, (B, S), generator=gen)
    labels = torch.randint(0, VOCAB, (B, S), generator=gen)
    keep = torch.rand(B, S, generator=gen) < (torch.arange(1, B + 1) / B).unsqueeze(1)
    keep[:, -1] = True  # at least one trained token per row
    labels[~keep] = -100
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": torch.arange(S).expand(B, S),
        "document_ids": torch.zeros(B, S, dtype=torch.long),
    }


def micro_batches(
    batch: dict[str, torch.Tensor], dp_rank: int, dp_world: int, accumulation: int
) -> list[dict]:
    """This rank's rows (a contiguous share) split into ``accumulation`` micro-batches."""
    share = B // dp_world
    rows = range(dp_rank * share, (dp_rank + 1) * share)
    step = share // accumulation
    return [
        {k: v[rows.start + i * step : rows.start + (i + 1) * step] for k, v in batch.items()}
        for i in range(accumulation)
    ]


def trained_tokens(batches: list[dict]) -> int:
    return sum(int((b["labels"] != -100).sum()) for b in batches)


def loss_of(
    model: nn.Module, b: dict[str, torch.Tensor], normalizer: int, chunk_size: int | None
) -> torch.Tensor:
    """ft-recipes' ``batch_loss``; with ``chunk_size``, the same loss projected in chunks that small, so
    the sharded ``lm_head`` is called many times outside the model's forward."""
    if chunk_size is None:
        return batch_loss(model, b, normalizer=normalizer)
    hidden = model(
        b["input_ids"], position_ids=b["position_ids"], document_ids=b["document_ids"], return_hidden=True
    )
    return linear_cross_entropy(
        hidden, model.output_projection, b["labels"], normalizer=normalizer, chunk_size=chunk_size
    )


def window(
    model: nn.Module,
    batches: list[dict],
    normalizer: int,
    *,
    chunk_size: int | None = None,
    sync_every: bool = False,
) -> tuple[torch.Tensor, bool]:
    """Forward and backward over one accumulation window; gradients reduced on the last micro-batch only
    (on every one with ``sync_every``, the variant that shows the check below can fail).

    Returns:
        The window's loss and whether any sharded gradient existed before the last micro-batch (a
        reduction ran early).
    """
    total = torch.zeros(())
    reduced_early = False
    for i, b in enumerate(batches):
        last = i == len(batches) - 1
        ft_dist.set_gradient_sync(model, last or sync_every)
        loss = loss_of(model, b, normalizer, chunk_size)
        loss.backward()
        total += loss.detach().float()
        if not last:
            reduced_early |= any(p.grad is not None for p in model.parameters())
    return total, reduced_early


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p.grad) for n, p in model.named_parameters() if p.grad is not None}


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p) for n, p in model.named_parameters() if p.requires_grad}


def train(
    model: nn.Module,
    *,
    dp_rank: int = 0,
    dp_world: int = 1,
    accumulation: int = 1,
    group: dist.ProcessGroup | None = None,
    rank_mean: bool = False,
    steps: int = STEPS,
    chunk_size: int | None = None,
    sync_every: bool = False,
) -> dict[str, Any]:
    """``steps`` AdamW steps; the gradients of the first, the parameters after the last, each loss.

    ``rank_mean`` is the wrong variant that divides by this rank's own tokens (then FSDP averages).
    """
    optimizer = build_optimizer(model, "adamw", lr=LR, weight_decay=0.1, eps=EPS)
    out: dict[str, Any] = {
        "loss": [],
        "fused": bool(optimizer.defaults.get("fused")),
        "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
    }
    for step in range(steps):
        batches = micro_batches(global_batch(step), dp_rank, dp_world, accumulation)
        mine = trained_tokens(batches)
        normalizer = mine if rank_mean else ft_dist.global_count(mine, group=group)
        loss, reduced_early = window(model, batches, normalizer, chunk_size=chunk_size, sync_every=sync_every)
        if dist.is_initialized():
            dist.all_reduce(loss, group=group)  # the window's loss: sum of the ranks' shares
        out["loss"].append(loss)
        if step == 0:
            out["grads"] = grads(model)
            out["reduced_early"] = reduced_early
        optimizer.step()
        optimizer.zero_grad()
    out["params"] = params(model)
    return out


def _divide_by(model: nn.Module, factor: float, *, skip_root: bool) -> None:
    """FSDP's default reduction (divide by the data-parallel size) back on, for the wrong variants."""
    for module in ft_dist.fsdp_modules(model):
        if not (skip_root and module is model):
            module.set_gradient_divide_factor(factor)


def run(rank: int, world: int, root: str) -> None:
    """One of the ``world`` (4) ranks: every sharded run of the test, results saved by rank 0."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

        pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both groups
        pair_group = pairs[rank // 2]
        meshes = {
            "fsdp2": DeviceMesh.from_group(pair_group, "cpu"),
            "fsdp4": init_device_mesh("cpu", (world,)),
            "hsdp": init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp_replicate", "dp_shard")),
        }
        placement = {
            "fsdp2": (rank % 2, 2, pair_group),
            "fsdp4": (rank, world, None),
            "hsdp": (rank, world, None),
        }
        results: dict[str, Any] = {}
        for method in METHODS:
            for topology, mesh in meshes.items():
                dp_rank, dp_world, group = placement[topology]
                model = ft_dist.shard_model(build(method), mesh)
                results[f"{method}/{topology}"] = train(
                    model, dp_rank=dp_rank, dp_world=dp_world, group=group
                )

        # ranks x accumulation: 2 x 2 here, 4 x 1 is fsdp4 above, 1 x 4 the test's reference.
        model = ft_dist.shard_model(build("full"), meshes["fsdp2"])
        results["full/2x2"] = train(model, dp_rank=rank % 2, dp_world=2, accumulation=2, group=pair_group)
        model = ft_dist.shard_model(build("full"), meshes["fsdp2"])
        results["full/2x2/sync_every"] = train(
            model, dp_rank=rank % 2, dp_world=2, accumulation=2, group=pair_group, steps=1, sync_every=True
        )

        # The loss projected in chunks of 3 positions: lm_head runs many times after the model's forward.
        for method in ("full", "lora"):
            model = ft_dist.shard_model(build(method), meshes["hsdp"])
            results[f"chunked/{method}"] = train(
                model, dp_rank=rank, dp_world=world, accumulation=2, chunk_size=3
            )

        # Wrong variants (one step): FSDP's average of per-rank means, and the division off on the root only.
        for topology in ("fsdp4", "hsdp"):
            model = ft_dist.shard_model(build("full"), meshes[topology])
            _divide_by(model, float(world), skip_root=False)
            results[f"wrong/rank_mean/{topology}"] = train(
                model, dp_rank=rank, dp_world=world, rank_mean=True, steps=1
            )
            model = ft_dist.shard_model(build("full"), meshes[topology])
            _divide_by(model, float(world), skip_root=True)
            results[f"wrong/root_only/{topology}"] = train(model, dp_rank=rank, dp_world=world, steps=1)

        # bf16-mixed: FSDP2's MixedPrecisionPolicy from ft-recipes' precision policy.
        policy = resolve_precision("bf16-mixed", "cpu")
        for method in ("full", "lora"):
            model = apply_precision(build(method), policy, sharded=True)
            ft_dist.shard_model(model, meshes["fsdp2"], param_dtype=policy.fsdp_param_dtype)
            results[f"bf16/{method}"] = train(model, dp_rank=rank % 2, dp_world=2, group=pair_group, steps=1)

        # Clipping: HSDP gradients (replicated x sharded DTensors) with a plain replicated tensor beside them.
        for topology in ("fsdp4", "hsdp"):
            model = ft_dist.shard_model(build("full"), meshes[topology])
            batches = micro_batches(global_batch(0), rank, world, 1)
            window(model, batches, ft_dist.global_count(trained_tokens(batches)))
            extra = nn.Parameter(torch.zeros(7))
            extra.grad = torch.linspace(-0.3, 0.4, 7)
            everything = [*model.parameters(), extra]
            naive = torch.nn.utils.get_total_norm(
                [p.grad.to_local() for p in model.parameters()] + [extra.grad]
            )
            norm = ft_dist.clip_grad_norm_(everything, CLIP)
            results[f"clip/{topology}"] = {
                "norm": norm,
                "naive": naive,
                "grads": grads(model),
                "extra": extra.grad,
            }

        # Activation checkpointing, then per-block compile, then sharding (the recipes' order).
        model = build("full")
        ft_dist.apply_activation_checkpointing(model)
        compile_blocks(model, backend="aot_eager")
        ft_dist.shard_model(model, meshes["fsdp2"])
        results["compiled"] = train(model, dp_rank=rank % 2, dp_world=2, group=pair_group, steps=1)
        results["compiled"]["frames"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]

        if rank == 0:
            torch.save(results, Path(root) / "results.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def reference(method: str, **kwargs: Any) -> dict[str, Any]:
    """The single-process run (no process group, no sharding) of :func:`train`."""
    return train(build(method), **kwargs)


def reference_bf16(method: str) -> dict[str, Any]:
    """Single-device bf16-mixed: ft-recipes' per-unit casts."""
    model = apply_precision(build(method), resolve_precision("bf16-mixed", "cpu"))
    return train(model, steps=1)
