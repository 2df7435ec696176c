"""Precision policies: auto's choice (oneDNN bf16 or not), bf16-mixed numerics against explicit casts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_training_support import LLAMA, batch, tiny_model
from torch import nn

import ft_dist
import ft_peft
from ft_recipes.training import (
    PrecisionError,
    apply_precision,
    linear_cross_entropy,
    resolve_inference_precision,
    resolve_precision,
)

_PROBE = "from ft_recipes.training import resolve_precision; p = resolve_precision('auto', 'cpu'); print(p.name); print(p.reason)"


def _auto_in_subprocess(**env: str) -> tuple[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out[0], out[1]


def test_auto_is_fp32_without_native_bf16() -> None:
    name, reason = _auto_in_subprocess(ONEDNN_MAX_CPU_ISA="AVX2")
    assert name == "fp32"
    assert "no native bf16" in reason


def test_auto_follows_the_cpu_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("needs /proc/cpuinfo to know the CPU's bf16 instructions independently")
    flags = set(cpuinfo.read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    name, reason = _auto_in_subprocess()
    assert name == ("bf16-mixed" if native else "fp32"), reason


_INFERENCE_PROBE = (
    "from ft_recipes.training import resolve_inference_precision as r, resolve_precision as t; "
    "print(r('auto', 'cpu').name); print(t('auto', 'cpu').name); print(r('auto', 'cpu').reason)"
)


@pytest.mark.parametrize("env", [{}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}], ids=["this-cpu", "no-native-bf16"])
def test_inference_auto_stays_fp32_on_a_cpu_where_training_follows_native_bf16(env: dict[str, str]) -> None:
    """The two documented rules, side by side on one CPU: training's auto follows native bf16, the
    inference auto is fp32 either way (so on a bf16 CPU the two differ, as documented)."""
    out = subprocess.run(
        [sys.executable, "-c", _INFERENCE_PROBE], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    inference, training, reason = out.stdout.splitlines()
    assert inference == "fp32", reason
    native, _ = _auto_in_subprocess(**env)
    assert training == native
    assert reason.startswith("auto -> fp32: CPU")
    if training == "bf16-mixed":
        assert "inference on a CPU stays fp32" in reason


def test_inference_precision_names() -> None:
    assert resolve_inference_precision("bf16", "cpu").dtype == torch.bfloat16
    assert resolve_inference_precision("fp16", "cpu").dtype == torch.float16
    assert resolve_inference_precision("fp32", "cpu").reason == "fp32: requested"
    if not torch.cuda.is_available():  # no GPU: auto on a CUDA device has no bf16 to use
        assert resolve_inference_precision("auto", "cuda").dtype == torch.float32
    with pytest.raises(
        PrecisionError, match=r"^precision: unknown value 'bf16-mixed' \(expected one of auto"
    ):
        resolve_inference_precision("bf16-mixed", "cpu")


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d - 1)
        self.down = nn.Linear(2 * d - 1, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class _Net(nn.Module):
    def __init__(self, vocab: int = 53, d: int = 14) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([_Block(d), _Block(d)])
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def _by_hand(weights: dict[str, torch.Tensor], ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    w = {k: v.to(dtype) for k, v in weights.items()}  # explicit casts of the fp32 masters
    x = F.embedding(ids, w["embed.weight"])
    for i in range(2):
        h = F.gelu(F.linear(x, w[f"layers.{i}.up.weight"], w[f"layers.{i}.up.bias"]))
        x = x + F.linear(h, w[f"layers.{i}.down.weight"], w[f"layers.{i}.down.bias"])
    return F.linear(x, w["head.weight"]).float()


@pytest.mark.parametrize(("name", "dtype"), [("bf16-mixed", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_matches_explicit_casts(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = _Net()
    ids = torch.randint(0, 53, (3, 9))
    target = torch.randint(0, 53, (3, 9))
    masters = {k: v.detach().clone().requires_grad_() for k, v in net.state_dict().items()}
    expected = F.cross_entropy(_by_hand(masters, ids, dtype).flatten(0, 1), target.flatten())
    expected.backward()
    wrong = F.cross_entropy(_by_hand(masters, ids, torch.float32).flatten(0, 1), target.flatten())

    keys = list(net.state_dict())
    policy = resolve_precision(name, "cpu")
    apply_precision(net, policy)
    assert list(net.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in net.parameters())  # masters stay fp32
    loss = F.cross_entropy(net(ids).float().flatten(0, 1), target.flatten())
    loss.backward()
    assert torch.equal(loss, expected)
    for name, param in net.named_parameters():
        assert param.grad is not None
        assert param.grad.dtype == torch.float32
        assert torch.equal(param.grad, masters[name].grad), name
    assert all(p.dtype == torch.float32 for p in net.parameters())  # restored after the forward
    # Wrong variant, same (exact) tolerance: computing in fp32 gives another result, by the rounding.
    assert not torch.equal(wrong, expected)
    fp32_logits = _by_hand(masters, ids, torch.float32)
    assert not torch.allclose(fp32_logits, _by_hand(masters, ids, dtype), rtol=1e-4, atol=0)


def test_bf16_mixed_lora_model_with_activation_checkpointing() -> None:
    def build() -> nn.Module:
        model = tiny_model(LLAMA, seed=4)
        ft_peft.apply_lora(model, ["q_proj", "v_proj", "down_proj"], rank=3, alpha=6)
        torch.manual_seed(5)
        for module in model.modules():
            if isinstance(module, ft_peft.LoRALinear):
                nn.init.normal_(module.lora_B.weight, std=0.2)
        ft_peft.set_trainable(model)
        return model

    ids, labels = batch(97, 2, 11, [11, 6])

    def grads(model: nn.Module) -> dict[str, torch.Tensor]:
        hidden = model(ids, return_hidden=True)
        linear_cross_entropy(hidden, model.output_projection, labels, normalizer=17, chunk_size=5).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    policy = resolve_precision("bf16-mixed", "cpu")
    plain = apply_precision(build(), policy)
    keys = list(build().state_dict())
    assert list(plain.state_dict()) == keys
    frozen = {n: p.dtype for n, p in plain.named_parameters() if not p.requires_grad}
    assert set(frozen.values()) == {torch.bfloat16}  # the base is stored in bf16
    trainable = {n: p.dtype for n, p in plain.named_parameters() if p.requires_grad}
    assert trainable
    assert set(trainable.values()) == {torch.float32}
    expected = grads(plain)

    checkpointed = apply_precision(build(), policy)
    assert ft_dist.apply_activation_checkpointing(checkpointed) == 2
    assert list(checkpointed.state_dict()) == keys
    got = grads(checkpointed)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name
    opt = torch.optim.AdamW([p for p in checkpointed.parameters() if p.requires_grad], lr=1e-2)
    opt.step()
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.float32}

    fp32 = build()
    fp32_grads = grads(fp32)  # wrong variant for this check: no bf16 compute at all
    name = next(iter(expected))
    assert not torch.allclose(fp32_grads[name], expected[name], rtol=1e-3, atol=0)

    wrapped_first = build()
    ft_dist.apply_activation_checkpointing(wrapped_first)
    with pytest.raises(PrecisionError, match="apply precision before activation checkpointing"):
        apply_precision(wrapped_first, policy)


def test_pure_and_fp16_policies() -> None:
    pure = resolve_precision("bf16-pure", "cpu")
    model = apply_precision(tiny_model(LLAMA), pure)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    fp16 = resolve_precision("fp16", "cpu")
    assert fp16.compute_dtype == torch.float16
    assert fp16.master_dtype == torch.float32
    scaler = fp16.make_grad_scaler("cpu")
    assert isinstance(scaler, torch.amp.GradScaler)
    net = apply_precision(_Net(), fp16)  # one scaled step: the optimizer sees unscaled fp32 gradients
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ids = torch.randint(0, 53, (2, 5))
    scaler.scale(net(ids).float().logsumexp(-1).mean()).backward()
    scaled = net.head.weight.grad.clone()
    scaler.unscale_(opt)
    torch.testing.assert_close(net.head.weight.grad * scaler.get_scale(), scaled, rtol=1e-6, atol=0)
    scaler.step(opt)
    scaler.update()
    assert resolve_precision("fp32", "cpu").make_grad_scaler("cpu") is None
    with pytest.raises(PrecisionError, match="precision: unknown value 'bf16'"):
        resolve_precision("bf16", "cpu")


@pytest.mark.parametrize(
    ("name", "param_dtype"),
    [("fp32", None), ("bf16-mixed", torch.bfloat16), ("bf16-pure", None), ("fp16", torch.float16)],
)
def test_sharded_precision_sets_storage_and_leaves_the_casts_to_fsdp(
    name: str, param_dtype: torch.dtype | None
) -> None:
    """For a model about to be sharded: the storage dtypes, no per-unit cast; FSDP2's param_dtype instead.

    The numbers a sharded bf16-mixed run gets from this are compared with the per-unit casts on one
    device in the top-level tests/test_dist_sharding.py (two gloo ranks).
    """
    policy = resolve_precision(name, "cpu")
    assert policy.fsdp_param_dtype == param_dtype
    ids = torch.randint(0, 53, (2, 5))
    torch.manual_seed(0)
    cast = apply_precision(_Net(), policy)
    torch.manual_seed(0)
    sharded = apply_precision(_Net(), policy, sharded=True)
    assert [p.dtype for p in sharded.parameters()] == [p.dtype for p in cast.parameters()]
    assert not any("forward" in vars(m) for m in sharded.modules())  # nothing wrapped
    if param_dtype is not None:  # wrong variant: without a sharding policy nothing computes in low precision
        assert any("forward" in vars(m) for m in cast.modules())
        assert sharded(ids).dtype == torch.float32
        assert cast(ids).dtype == param_dtype


def test_recipe_schemas_offer_exactly_the_precisions_the_rules_resolve() -> None:
    """The schemas spell the names as Literals (``tune validate`` must not import torch to read them);
    they must stay the copies of the tuples the two rules accept."""
    import typing

    from ft_recipes import eval as eval_recipe
    from ft_recipes import full_finetune_single_device, generate, lora_finetune_single_device
    from ft_recipes.training import INFERENCE_PRECISIONS, PRECISIONS

    def names(schema: type) -> tuple[str, ...]:
        return typing.get_args(typing.get_type_hints(schema)["precision"])

    assert names(lora_finetune_single_device.Config) == PRECISIONS
    assert names(full_finetune_single_device.Config) == PRECISIONS
    assert names(generate.Config) == INFERENCE_PRECISIONS
    assert names(eval_recipe.Config) == INFERENCE_PRECISIONS
