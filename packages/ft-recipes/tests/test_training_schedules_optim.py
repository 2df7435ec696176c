"""LR schedules against transformers' curves, optimizers by name, gradient clipping against a hand norm."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from ft_recipes.training import (
    OptimizerError,
    ScheduleError,
    build_lr_scheduler,
    build_optimizer,
    clip_grad_norm,
)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.3)


REFERENCES = {
    "cosine": lambda o, w, t: get_cosine_schedule_with_warmup(o, w, t),
    "linear": lambda o, w, t: get_linear_schedule_with_warmup(o, w, t),
    "constant": lambda o, w, t: get_constant_schedule_with_warmup(o, w),
}


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedules_match_transformers(kind: str) -> None:
    expected = _lrs(REFERENCES[kind](_opt(), 3, 17), 18)
    got = _lrs(build_lr_scheduler(_opt(), kind, warmup_steps=3, total_steps=17), 18)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    off_by_one = _lrs(build_lr_scheduler(_opt(), kind, warmup_steps=4, total_steps=17), 18)  # wrong variant
    assert off_by_one != pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_min_lr_ratio_and_state_round_trip() -> None:
    sched = build_lr_scheduler(_opt(), "cosine", warmup_steps=2, total_steps=10, min_lr_ratio=0.1)
    lrs = _lrs(sched, 11)
    by_hand = [0.3 * s / 2 for s in range(2)] + [
        0.3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8))) for s in range(2, 11)
    ]
    assert lrs == pytest.approx(by_hand, rel=1e-12)
    assert lrs[-1] == pytest.approx(0.03)

    first = build_lr_scheduler(_opt(), "linear", warmup_steps=1, total_steps=9)
    _lrs(first, 4)
    state = first.state_dict()
    assert state["lr_lambdas"] == [
        {"kind": "linear", "warmup_steps": 1, "total_steps": 9, "min_lr_ratio": 0.0}
    ]
    resumed = build_lr_scheduler(
        _opt(), "cosine", warmup_steps=5, total_steps=50
    )  # config changed: state wins
    resumed.load_state_dict(state)
    assert _lrs(resumed, 5) == pytest.approx(_lrs(first, 5), rel=1e-15)


def test_schedule_errors() -> None:
    with pytest.raises(ScheduleError, match="unknown schedule 'cos'"):
        build_lr_scheduler(_opt(), "cos", total_steps=3)
    with pytest.raises(ScheduleError, match="warmup_steps=5, total_steps=3"):
        build_lr_scheduler(_opt(), "linear", warmup_steps=5, total_steps=3)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(70, 90), nn.Tanh(), nn.Linear(90, 5))  # 6300 > bitsandbytes' 4096 floor
    model[2].bias.requires_grad_(False)  # frozen: must not reach the optimizer
    return model


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, 70, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def _reference_class(name: str) -> type:
    if name in ("adamw", "sgd"):
        return {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    bnb = pytest.importorskip("bitsandbytes")
    return {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW}[name]


@pytest.mark.parametrize("name", ["adamw", "sgd", "adamw8bit", "paged_adamw"])
def test_optimizers_match_direct_construction(name: str) -> None:
    extra = {"momentum": 0.9} if name == "sgd" else {"betas": (0.8, 0.95), "eps": 1e-6}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        model = _model()
        opt = build_optimizer(model, name, lr=1e-2, weight_decay=0.1, **extra)
        assert sum(len(g["params"]) for g in opt.param_groups) == 3  # the frozen bias is left out
        _train(model, opt)
        ref = _model()
        cls = _reference_class(name)
        fused = {"fused": True} if name == "adamw" else {}  # torch's fused AdamW kernel is chosen
        ref_opt = cls(
            [p for p in ref.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1, **extra, **fused
        )
        _train(ref, ref_opt)
        if fused:  # and it agrees with the per-op implementation up to fp32 rounding
            loop = _model()
            _train(
                loop,
                cls([p for p in loop.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1, **extra),
            )
            for got, want in zip(ref.parameters(), loop.parameters(), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        no_decay = _model()  # wrong variant: weight decay not passed through
        nd_opt = cls([p for p in no_decay.parameters() if p.requires_grad], lr=1e-2, **extra)
        _train(no_decay, nd_opt)
    for (key, value), ref_value, _nd_value in zip(
        model.state_dict().items(), ref.state_dict().values(), no_decay.state_dict().values(), strict=True
    ):
        assert torch.equal(value, ref_value), key
    assert not torch.equal(model[0].weight, no_decay[0].weight)
    if name == "adamw8bit":  # the state really is 8-bit
        assert opt.state[model[0].weight]["state1"].dtype == torch.uint8


def test_optimizer_errors() -> None:
    with pytest.raises(OptimizerError, match="unknown name 'adam'"):
        build_optimizer(_model(), "adam", lr=1.0)
    frozen = _model().requires_grad_(False)
    with pytest.raises(OptimizerError, match="no parameter that requires grad"):
        build_optimizer(frozen, "adamw", lr=1.0)


def test_clip_grad_norm_against_hand_norm() -> None:
    model = _model(3)
    model(torch.randn(4, 70)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    by_hand = torch.cat([g.double().flatten() for g in grads]).norm()
    per_param_mean = torch.stack([g.double().norm() for g in grads]).mean()  # wrong variant
    total = clip_grad_norm(model, 0.5)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total.double(), by_hand, rtol=1e-6, atol=0)
    assert not torch.allclose(per_param_mean, by_hand, rtol=1e-6, atol=0)
    clipped = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None]).norm()
    torch.testing.assert_close(clipped, torch.tensor(0.5, dtype=torch.float64), rtol=1e-5, atol=0)
    for p, g in zip([p for p in model.parameters() if p.grad is not None], grads, strict=True):
        torch.testing.assert_close(p.grad, g * (0.5 / by_hand.float()), rtol=1e-5, atol=1e-8)

    assert clip_grad_norm(model, None) == pytest.approx(0.5, rel=1e-5)  # measuring only
    model[0].weight.grad[0, 0] = float("nan")
    before = model[0].weight.grad.clone()
    assert torch.isnan(clip_grad_norm(model, 0.5))
    assert torch.equal(model[0].weight.grad[1:], before[1:])  # left unscaled for the caller to skip
