"""Checkpoints of ft models through ft_dist with the training utilities: exact resume, plain and LoRA."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
import torch
from test_training_support import LLAMA, tiny_model
from torch import nn

import ft_dist
import ft_peft
from ft_recipes.training import build_lr_scheduler, build_optimizer, clip_grad_norm, linear_cross_entropy


def _micro_batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Draws from torch's and Python's generators, as shuffling and masking would.
    ids = torch.randint(0, 97, (2, 10))
    labels = ids.roll(-1, dims=1)
    labels[:, : random.randint(1, 6)] = -100
    return ids, labels


def _step(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    window = [_micro_batch() for _ in range(2)]
    normalizer = sum(int((labels != -100).sum()) for _, labels in window)
    for ids, labels in window:
        hidden = model(ids, return_hidden=True)
        linear_cross_entropy(
            hidden, model.output_projection, labels, normalizer=normalizer, chunk_size=6
        ).backward()
    clip_grad_norm(model, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()


def _build(
    lora: bool, seed: int
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = tiny_model(LLAMA, seed=0)  # the same base weights every time (as loaded from a checkpoint)
    if lora:
        torch.manual_seed(seed)  # a different adapter init each time
        ft_peft.apply_lora(model, ["q_proj", "v_proj", "up_proj"], rank=2, alpha=4)
        ft_peft.set_trainable(model)
    else:
        with torch.no_grad():
            model.lm_head.weight.add_(seed)  # fresh objects really differ before loading
    opt = build_optimizer(model, "adamw8bit" if lora else "adamw", lr=5e-2, weight_decay=0.1)
    sched = build_lr_scheduler(opt, "cosine", warmup_steps=1, total_steps=8)
    return model, opt, sched


def _app_state(
    model: nn.Module, opt: torch.optim.Optimizer, sched: object, lora: bool, counters: dict
) -> dict:
    return {
        "train": ft_dist.ModelOptimizerState(model, opt, trainable_only=lora),
        "sched": sched,
        "counters": counters,
    }


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_is_bit_identical(tmp_path: Path, lora: bool) -> None:
    warnings.filterwarnings("ignore", message="Paged optimizers")
    torch.manual_seed(11)
    random.seed(11)
    model, opt, sched = _build(lora, seed=1)
    for _ in range(2):
        _step(model, opt, sched)
    counters = {"step": 2, "tokens": torch.tensor(77), "rows_consumed": 8}
    ckpt = ft_dist.save_checkpoint(
        tmp_path, 2, app_state=_app_state(model, opt, sched, lora, counters), rank_state=ft_dist.rng_state()
    )
    saved_lr = sched.get_last_lr()
    saved_opt = {
        k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
        for k, v in opt.state_dict()["state"].items()
    }
    stored = set(ft_dist.read_metadata(str(ckpt / ".metadata")).state_dict_metadata)
    model_keys = {k.split(".", 2)[2] for k in stored if k.startswith("train.model.")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if lora:
        assert model_keys == trainable  # only the adapter is stored
        assert all(".lora_" in k for k in model_keys)
    else:
        assert model_keys == set(model.state_dict())
    for _ in range(3):
        _step(model, opt, sched)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)
    random.seed(123)
    fresh, fresh_opt, fresh_sched = _build(lora, seed=2)
    ft_dist.apply_activation_checkpointing(fresh)  # resuming with checkpointing on changes nothing
    got_counters = {"step": 0, "tokens": torch.tensor(0), "rows_consumed": 0}
    rank_state = ft_dist.load_checkpoint(
        ft_dist.latest_checkpoint(tmp_path),
        app_state=_app_state(fresh, fresh_opt, fresh_sched, lora, got_counters),
    )
    assert rank_state is not None
    ft_dist.set_rng_state(rank_state)
    assert got_counters == counters
    assert fresh_sched.last_epoch == 2
    assert fresh_sched.get_last_lr() == saved_lr
    assert fresh_sched.lr_lambdas[0].warmup_steps == 1
    loaded_opt = fresh_opt.state_dict()["state"]
    for key, tensors in saved_opt.items():
        for name, value in tensors.items():
            assert torch.equal(loaded_opt[key][name], value), (key, name)
    for _ in range(3):
        _step(fresh, fresh_opt, fresh_sched)
    for key, value in expected.items():
        assert torch.equal(fresh.state_dict()[key], value), key
