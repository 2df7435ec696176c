"""DPO on a real ft LoRA model: the step-0 identities, disabled adapters against a frozen copy, the gradient
of the fused per-sequence log-probs against plain autograd through full logits, pair normalisation across
accumulation, and precomputed reference log-probs against live ones. Each check has a wrong variant that
must fail."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dpo_support import make_tiny_dpo

import ft_data
import ft_models
import ft_peft
from ft_recipes.steps import (
    adapters_off_reference,
    precompute_reference,
    preference_forward_backward,
    table_reference,
)
from ft_recipes.training import PreferenceLoss, completion_logps, preference_loss, sequence_logps

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dpo_steps")
    model_dir, pairs = make_tiny_dpo(root)
    tok = ft_data.load_tokenizer(model_dir)
    ds = ft_data.build_preference_dataset(pairs, tokenizer=tok, use_cache=False)
    return {"model_dir": model_dir, "tok": tok, "ds": ds}


def _lora(files: dict, b_std: float = 0.0, seed: int = 0) -> ft_models.CausalLM:
    torch.manual_seed(seed)
    model = ft_models.from_pretrained(files["model_dir"], dtype=torch.float32)
    ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8)
    ft_peft.set_trainable(model)
    if b_std:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(b_std * torch.randn_like(p))
    return model


def _batch(files: dict, indices: list[int]) -> dict[str, torch.Tensor]:
    loader = ft_data.Loader(
        files["ds"], batch_size=len(indices), max_seq_len=512, packed=False, pad_id=files["tok"].pad_id
    )
    return loader.batch([[i] for i in indices])


def test_step_zero_policy_equals_reference(files: dict) -> None:
    model = _lora(files)  # B = 0: the adapter adds exactly nothing
    batch = _batch(files, [0, 1, 2, 3])
    reference = adapters_off_reference(model)(batch)
    policy = sequence_logps(model, batch)
    assert torch.equal(policy.logps.detach(), reference)
    beta = 0.1
    expected = {"sigmoid": math.log(2), "hinge": 1.0, "ipo": (1 / (2 * beta)) ** 2, "robust": math.log(2)}
    for name, value in expected.items():
        cfg = PreferenceLoss((name,), beta=beta, label_smoothing=0.1 if name == "robust" else 0.0)
        loss, stats = preference_loss(cfg, policy, reference, num_pairs=4)
        assert abs(float(loss) - value) < 1e-6, (name, float(loss), value)
        metrics = stats.metrics()
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert metrics[key] == 0.0, (name, key, metrics[key])
    # a moved adapter is no longer the reference
    moved = _lora(files, b_std=0.3)
    moved_policy = sequence_logps(moved, batch)
    loss, stats = preference_loss(
        PreferenceLoss(), moved_policy, adapters_off_reference(moved)(batch), num_pairs=4
    )
    assert abs(float(loss) - math.log(2)) > 1e-3
    assert stats.metrics()["rewards/chosen"] != 0.0


def test_disabled_adapters_equal_a_frozen_copy_bit_for_bit(files: dict) -> None:
    model = _lora(files, b_std=0.3)
    frozen = ft_models.from_pretrained(files["model_dir"], dtype=torch.float32).eval()
    batch = _batch(files, [0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        copy = sequence_logps(frozen, batch)
        disabled = adapters_off_reference(model)(batch)
        enabled = sequence_logps(model, batch).logps
    assert torch.equal(disabled, copy.logps)
    assert (enabled - copy.logps).abs().max() > 1e-2  # the adapter does change the model
    # and the adapters are back on afterwards
    with torch.no_grad():
        assert torch.equal(sequence_logps(model, batch).logps, enabled)


def _naive_logps(model: ft_models.CausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-row summed log-probs through full [b, s, v] fp32 logits and plain autograd."""
    logits = model(
        batch["input_ids"], position_ids=batch["position_ids"], document_ids=batch["document_ids"]
    ).float()
    labels = batch["labels"]
    logp = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)  # [b, s]
    return (logp * (labels != -100)).sum(1)


@pytest.mark.parametrize("lora", [True, False])
def test_fused_logps_gradient_equals_full_logits(files: dict, lora: bool) -> None:
    """LoRA (frozen projection: gradient taken in the forward) and full fine-tuning (tied, trainable
    projection: chunks recomputed) against autograd through full logits, under a DPO-shaped loss whose
    per-token upstream gradient differs between rows."""
    batch = _batch(files, [0, 1, 2, 3, 4, 5])
    weights = torch.linspace(-1.0, 2.0, 12)

    def grads(fn) -> dict[str, torch.Tensor]:
        model = (
            _lora(files, b_std=0.3)
            if lora
            else ft_models.from_pretrained(files["model_dir"], dtype=torch.float32)
        )
        loss = -F.logsigmoid(weights * fn(model)).sum() * 1e-2
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fused = grads(lambda m: sequence_logps(m, batch, chunk_size=7).logps)
    naive = grads(lambda m: _naive_logps(m, batch))
    assert fused.keys() == naive.keys()
    assert len(fused) == (2 * len(TARGETS) * 2 if lora else sum(1 for _ in naive))
    for name in fused:
        scale = naive[name].abs().max()
        assert scale > 0, name
        assert (fused[name] - naive[name]).abs().max() <= 1e-5 * max(1.0, float(scale)), name
    # wrong variant: the prompt tokens counted as well
    wrong_batch = {
        **batch,
        "labels": torch.where(batch["document_ids"] >= 0, torch.roll(batch["input_ids"], -1, 1), -100),
    }
    wrong = grads(lambda m: sequence_logps(m, wrong_batch).logps)
    assert max(float((wrong[n] - naive[n]).abs().max()) for n in naive) > 1e-3


def test_completion_logps_without_trained_positions_is_zero_with_a_graph(files: dict) -> None:
    model = _lora(files, b_std=0.3)
    batch = _batch(files, [0, 1])
    batch["labels"] = torch.full_like(batch["labels"], -100)
    hidden = model(
        batch["input_ids"],
        position_ids=batch["position_ids"],
        document_ids=batch["document_ids"],
        return_hidden=True,
    )
    out = completion_logps(hidden, model.output_projection, batch["labels"])
    assert out.logps.tolist() == [0.0] * 4
    assert out.tokens.tolist() == [0] * 4
    out.logps.sum().backward()  # harmless


def _window_grads(
    files: dict, windows: list[list[list[int]]], per_micro_batch: bool = False
) -> dict[str, torch.Tensor]:
    model = _lora(files, b_std=0.3)
    cfg = PreferenceLoss(("sigmoid", "ipo"), loss_weights=(1.0, 0.5), beta=0.2)
    reference = adapters_off_reference(model)
    for window in windows:
        batches = [_batch(files, mb) for mb in window]
        if per_micro_batch:  # the classic accumulation bug: each micro-batch normalised by its own pairs
            for b in batches:
                preference_forward_backward(model, [b], torch.device("cpu"), cfg, reference)
        else:
            preference_forward_backward(model, batches, torch.device("cpu"), cfg, reference)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_pair_normalisation_makes_accumulation_invisible(files: dict) -> None:
    pairs = [0, 3, 1, 5]  # answers of very different lengths
    one = _window_grads(files, [[pairs]])  # 4 x 1
    two = _window_grads(files, [[pairs[:2], pairs[2:]]])  # 2 x 2 accumulation
    four = _window_grads(files, [[[p] for p in pairs]])  # 1 x 4
    # fp32 summation order differs with the micro-batch shape (GEMM blocking): a few ulps of the largest
    # gradient; the wrong variant below is off by more than half of it.
    for name in one:
        scale = max(1.0, float(one[name].abs().max()))
        assert (two[name] - one[name]).abs().max() <= 1e-5 * scale, name
        assert (four[name] - one[name]).abs().max() <= 1e-5 * scale, name
    wrong = _window_grads(files, [[pairs[:2], pairs[2:]]], per_micro_batch=True)
    assert max(float((wrong[n] - one[n]).abs().max() / one[n].abs().max()) for n in one) > 0.5


def test_precomputed_reference_equals_live(files: dict) -> None:
    model = _lora(files, b_std=0.3)
    live = adapters_off_reference(model)
    loader = ft_data.Loader(
        files["ds"], batch_size=2, max_seq_len=512, packed=False, seed=4, pad_id=files["tok"].pad_id
    )
    table = precompute_reference(live, loader, torch.device("cpu"), batch_size=4)
    lookup = table_reference(table)
    for batch in loader:  # shuffled, other batch compositions than the precompute's
        assert (lookup(batch) - live(batch)).abs().max() <= 1e-5
    # wrong variant: the policy's own log-probs (adapters on) as the "reference"
    with torch.no_grad():
        policy = sequence_logps(model, batch).logps
    assert (lookup(batch) - policy).abs().max() > 1e-2
    assert table.shape == (len(files["ds"]), 2)


def test_shipped_dpo_config_is_registered() -> None:
    from ft_recipes.registry import find_config, find_recipe

    info = find_recipe("lora_dpo_single_device")
    assert "smollm2/135M_dpo" in info.configs
    assert Path(find_config("smollm2/135M_dpo")).is_file()
