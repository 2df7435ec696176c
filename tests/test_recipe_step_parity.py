"""One training step of ft's recipes against transformers (+ PEFT) on the same data, mask and AdamW.

A tiny Llama (GQA 3:1, head_dim 24 != 60 / 3) saved as an HF directory with SmolLM2's real tokenizer,
a chat JSONL whose examples differ in length, two micro-batches per step. The recipe builds everything
(`setup`); the step is the recipe's own shared `forward_backward` + `optimizer_step`. The reference is
transformers' `LlamaForCausalLM` (wrapped by PEFT for LoRA), the summed cross-entropy over the window's
trained tokens divided by their count, and `torch.optim.AdamW`. Every comparison is measured in units
of its tolerance (the largest |ours - reference| / allowed): the real step stays within 1, and each
wrong variant must miss by a margin, at least MARGIN times the tolerance, not by one stray element:
PEFT with rsLoRA scaling (alpha / sqrt(r)), the per-micro-batch mean loss, and AdamW without its
decoupled weight decay (checked on every parameter tensor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from test_recipe_support import make_tiny
from transformers import LlamaForCausalLM

import ft_peft
from ft_recipes import steps
from ft_recipes.runner import prepare

# A weight decay large enough that dropping it moves every tensor by over MARGIN x the parameter
# tolerance (lr * wd * |p| against rtol * |p|: 1e-2 * 0.2 / 1e-4 = 20 on the larger weights).
LR, WD, RANK, ALPHA = 1e-2, 0.2, 4, 8.0
MARGIN = 10.0
ATOL, RTOL = 1e-6, 1e-4
TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("parity"))


def _config(tmp_path: Path, model_dir: Path, data: Path, lora: bool) -> Path:
    text = f"""
model: {{_component_: from_pretrained, path: {model_dir}}}
tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}
dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}
output_dir: {tmp_path / "out"}
device: cpu
precision: fp32
batch_size: 2
gradient_accumulation_steps: 2
packed: false
max_seq_len: 128
clip_grad_norm: null
optimizer: {{name: adamw, lr: {LR}, weight_decay: {WD}}}
lr_schedule: {{kind: constant, warmup_steps: 0}}
"""
    if lora:
        text += f"lora: {{target_modules: {TARGETS}, rank: {RANK}, alpha: {ALPHA}, dropout: 0.0}}\n"
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def _reference_step(
    model: torch.nn.Module, window: list[dict[str, torch.Tensor]], per_micro_mean: bool = False
) -> float:
    """transformers forward, window-normalised summed CE (or the naive per-micro-batch mean), backward."""
    normalizer = sum(int((b["labels"] != -100).sum()) for b in window)
    total = 0.0
    for b in window:
        logits = model(input_ids=b["input_ids"], attention_mask=(b["document_ids"] != -1).long()).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b["labels"].flatten(), reduction="sum")
        loss = loss / (int((b["labels"] != -100).sum()) * len(window) if per_micro_mean else normalizer)
        loss.backward()
        total += float(loss.detach())
    return total


def _window(run: Any) -> list[dict[str, torch.Tensor]]:
    batches = steps.micro_batches(run.loader, 0)
    window = [next(batches) for _ in range(2)]
    counts = sorted(int((b["labels"] != -100).sum()) for b in window)
    assert counts[1] >= 2 * counts[0], counts  # unequal micro-batches make the normaliser matter
    return window


def _excess(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest ``|a - b|`` in units of the tolerance ``ATOL + RTOL * |b|`` (<= 1: close)."""
    return float(((a - b).abs() / (ATOL + RTOL * b.abs())).max())


def _adamw_excess(
    after: torch.Tensor, ref_after: torch.Tensor, grad: torch.Tensor, ref_grad: torch.Tensor
) -> float:
    """Parameters after one AdamW step, in units of a tolerance that allows what the (separately
    checked) gradient gap explains, over the elements whose two gradients agree in sign.

    AdamW's first update is ``lr * g / (|g| + eps)``, whose slope ``lr * eps / (|g| + eps)**2`` reaches
    ``lr / eps`` = 1e6 near ``g = 0``. Two equally accurate fp32 cross-entropy gradients (log-softmax
    + NLL and the fused chunk loss, measured on a tiny head: each up to ~8e-7 from float64, and as far
    from each other) move a near-zero element's update by up to ``lr``. So each element may also
    differ by that slope, taken at the smaller gradient magnitude of the two, times the gradient gap.
    Where the two gradients differ in sign (both within noise of zero) the update may differ by up to
    ``2 * lr`` whatever the gap: those elements are left out here and checked through their gradients
    (:func:`_sign_flips_are_noise`).
    """
    eps = 1e-8  # torch.optim.AdamW's default, used by both sides
    same = grad.sign() == ref_grad.sign()
    slack = LR * eps * (grad - ref_grad).abs() / (torch.minimum(grad.abs(), ref_grad.abs()) + eps) ** 2
    ratio = (after - ref_after).abs() / (ATOL + RTOL * ref_after.abs() + slack)
    return float(ratio[same].max()) if bool(same.any()) else 0.0


def _sign_flips_are_noise(grad: torch.Tensor, ref_grad: torch.Tensor) -> bool:
    """Elements whose gradients differ in sign are within the gradient tolerance of each other."""
    flip = grad.sign() != ref_grad.sign()
    return not bool(flip.any()) or _excess(grad[flip], ref_grad[flip]) <= 1.0


@pytest.mark.parametrize("rslora_reference", [False, True], ids=["peft", "wrong-rslora"])
def test_lora_step_equals_peft(tiny: tuple[Path, Path], tmp_path: Path, rslora_reference: bool) -> None:
    from ft_recipes import lora_finetune_single_device as recipe

    model_dir, data = tiny
    run = recipe.setup(prepare(recipe, str(_config(tmp_path, model_dir, data, lora=True))).config)
    torch.manual_seed(5)
    with torch.no_grad():  # a non-zero B so that A has gradients too
        for _, layer in ft_peft.lora_modules(run.model):
            layer.lora_B.weight.normal_(0, 0.2)
    start = {k: v.clone() for k, v in ft_peft.adapter_state_dict(run.model).items()}

    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_cfg = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, use_rslora=rslora_reference
    )
    ref = get_peft_model(hf, peft_cfg).train()
    ref_params = {
        n.replace("base_model.model.", "").replace(".default", ""): p
        for n, p in ref.named_parameters()
        if p.requires_grad
    }
    assert set(ref_params) == set(start)
    with torch.no_grad():
        for name, p in ref_params.items():
            p.copy_(start[name])

    window = _window(run)
    loss, _, _ = steps.forward_backward(run.model, window, run.device)
    grads = {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}
    steps.optimizer_step(run.model, run.optimizer, run.scheduler, None)

    ref_loss = _reference_step(ref, window)
    opt = torch.optim.AdamW(list(ref_params.values()), lr=LR, weight_decay=WD)
    ref_grads = {n: p.grad.clone() for n, p in ref_params.items()}
    opt.step()

    after = ft_peft.adapter_state_dict(run.model)
    loss_excess = abs(loss - ref_loss) / (1e-5 * abs(ref_loss))
    grad_excess = max(_excess(grads[n], ref_grads[n]) for n in ref_grads)
    param_excess = max(_excess(after[n], ref_params[n].detach()) for n in ref_params)
    if rslora_reference:  # the wrong scaling misses loss and gradients by far more than the tolerance
        assert min(loss_excess, grad_excess) >= MARGIN, (loss_excess, grad_excess)
        return
    assert max(loss_excess, grad_excess, param_excess) <= 1.0, (loss_excess, grad_excess, param_excess)
    assert all(not torch.equal(after[n], start[n]) for n in start)  # the step changed every tensor


@pytest.mark.parametrize("per_micro_mean", [False, True], ids=["window-normalised", "wrong-per-micro-mean"])
def test_full_step_equals_transformers(tiny: tuple[Path, Path], tmp_path: Path, per_micro_mean: bool) -> None:
    from ft_recipes import full_finetune_single_device as recipe

    model_dir, data = tiny
    run = recipe.setup(prepare(recipe, str(_config(tmp_path, model_dir, data, lora=False))).config)
    ref = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()

    window = _window(run)
    loss, _, _ = steps.forward_backward(run.model, window, run.device)
    grads = {n: p.grad.clone() for n, p in run.model.named_parameters()}
    steps.optimizer_step(run.model, run.optimizer, run.scheduler, None)

    ref_loss = _reference_step(ref, window, per_micro_mean=per_micro_mean)
    ref_params = dict(ref.named_parameters())
    ref_grads = {n: p.grad.clone() for n, p in ref_params.items()}
    ref_before = {n: p.detach().clone() for n, p in ref_params.items()}
    torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD).step()

    assert set(grads) == set(ref_grads)
    after = {n: p.detach() for n, p in run.model.named_parameters()}
    loss_excess = abs(loss - ref_loss) / (1e-5 * abs(ref_loss))
    grad_excess = max(_excess(grads[n], ref_grads[n]) for n in ref_grads)
    if per_micro_mean:  # the naive mean misses loss and gradients by far more than the tolerance
        assert min(loss_excess, grad_excess) >= MARGIN, (loss_excess, grad_excess)
        return
    param_excess = {
        n: _adamw_excess(after[n], ref_params[n].detach(), grads[n], ref_grads[n]) for n in ref_params
    }
    assert max(loss_excess, grad_excess, *param_excess.values()) <= 1.0, (loss_excess, grad_excess)
    assert all(_sign_flips_are_noise(grads[n], ref_grads[n]) for n in ref_grads)
    # Wrong variant: the reference step without its decoupled weight decay misses every parameter
    # tensor by at least MARGIN x the tolerance (not one element out of all).
    no_decay = {n: ref_params[n].detach() + LR * WD * ref_before[n] for n in ref_params}
    missed = {n: _adamw_excess(after[n], no_decay[n], grads[n], ref_grads[n]) for n in ref_params}
    assert min(missed.values()) >= MARGIN, sorted(missed.items(), key=lambda kv: kv[1])[:3]
