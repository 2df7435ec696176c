"""Worker for the 2-process FSDP2 test (imported by spawned processes, so not a test module itself)."""

from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist
from torch import nn

import ft_peft
from ft_peft import QuantConfig


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(61, 96), nn.GELU(), nn.Linear(96, 37))  # odd n: padded shards
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    cfg = QuantConfig(kind, double_quant=True, compute_dtype=torch.float32)
    ft_peft.apply_lora(model, ["0", "2"], rank=4, alpha=8, use_dora=True, quantize=cfg)
    ft_peft.set_trainable(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _dense_base() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(61, 96), nn.GELU(), nn.Linear(96, 37))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    return model.state_dict()


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    y = model(x)
    y.square().mean().backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad
            grads[name] = g.full_tensor() if hasattr(g, "full_tensor") else g
    return y.detach(), grads


def run(rank: int, world: int, init_file: str) -> None:
    """Shard a QLoRA model with fully_shard and compare with the single-process run."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        x = torch.randn(8, 61, generator=torch.Generator().manual_seed(2))
        reference = _model("nf4")
        ref_out, ref_grads = _step(copy.deepcopy(reference), x)
        wrong_out, wrong_grads = _step(_model("fp4"), x)

        mesh = init_device_mesh("cpu", (world,))
        model = copy.deepcopy(reference)
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        packed = model[0].weight
        assert type(packed).__name__ == "DTensor", type(packed)
        assert packed.to_local().numel() < packed.numel(), "quantised weight is not sharded"
        assert packed.dtype == torch.uint8

        half = x.shape[0] // world
        out, grads = _step(model, x[rank * half : (rank + 1) * half])  # mean over half: grads average
        full_out = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(full_out, out)
        out = torch.cat(full_out)
        assert set(grads) == set(ref_grads), (sorted(grads), sorted(ref_grads))
        tol = {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(out, ref_out, **tol)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], **tol, msg=name)
        # Wrong variant: an FP4 base is a different model and must not match.
        assert not torch.allclose(out, wrong_out, **tol)
        assert not all(torch.allclose(grads[n], wrong_grads[n], **tol) for n in grads)
        # Adapter tensors gather to the reference values for saving; every rank joins the gather.
        for name, t in ft_peft.adapter_state_dict(model).items():
            torch.testing.assert_close(t.full_tensor(), ft_peft.adapter_state_dict(reference)[name], **tol)
        ft_peft.save_adapter(model, f"{init_file}.adapter-{rank}")
        reloaded = nn.Sequential(nn.Linear(61, 96), nn.GELU(), nn.Linear(96, 37))
        reloaded.load_state_dict(_dense_base(), strict=True)
        ft_peft.load_adapter(reloaded, f"{init_file}.adapter-{rank}")
        for name, t in ft_peft.adapter_state_dict(reloaded).items():
            torch.testing.assert_close(t, ft_peft.adapter_state_dict(reference)[name], atol=0, rtol=0)

        # Under a bf16 mixed-precision policy the gathered quantised tensors are the stored bits.
        from torch.distributed.fsdp import MixedPrecisionPolicy

        mixed = copy.deepcopy(reference)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in (mixed[0], mixed[2]):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(mixed, mesh=mesh, mp_policy=policy)
        seen: dict[str, torch.Tensor] = {}
        mixed[0].register_forward_pre_hook(
            lambda m, _: seen.update(
                {n: p.detach().clone() for n, p in m.named_parameters() if "weight" in n}
            )
        )
        mixed(x)
        assert seen["lora_A.weight"].dtype == torch.bfloat16  # the policy is in force
        for name, value in reference[0].named_parameters():
            if name.startswith("weight"):
                assert torch.equal(seen[name], value), name
    finally:
        dist.destroy_process_group()
