"""ft's preference losses and metrics against TRL's on the same weights and batch.

TRL (pinned in the test dependencies) runs in fp32 with bf16 off: ``DPOTrainer.compute_loss`` on one
collated batch, its metrics read through a logging callback (its public ``log``), for every loss type ft
offers; SimPO against ``CPOTrainer(loss_type="simpo", cpo_alpha=0)``, TRL's reference-free SimPO. The
policy is a LoRA model (the reference is the same model with adapters disabled, in both), or a plain
model with a frozen copy as reference. Deliberately wrong variants (IPO without length normalisation,
prompt tokens counted, chosen and rejected swapped) must miss TRL by a wide margin.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from dpo_support import PAIRS, make_tiny_dpo, trained_only
from peft import LoraConfig, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

import ft_data
import ft_models
import ft_peft
from ft_recipes.training import METRIC_NAMES, PreferenceLoss, preference_loss, sequence_logps

TARGETS = ["q_proj", "v_proj", "gate_proj"]
RANK, ALPHA = 4, 8.0


def close(a: float, b: float, tol: float = 1e-5) -> bool:
    """Within ``tol`` absolutely, or relatively for values above 1 (fp32 sums of a few hundred)."""
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dpo")
    model_dir, pairs = make_tiny_dpo(root)
    tok = ft_data.load_tokenizer(model_dir)
    ds = ft_data.build_preference_dataset(pairs, tokenizer=tok, use_cache=False)
    ft_examples, trl_examples = zip(*(trained_only(ds[i]) for i in range(len(ds))))
    # the LoRA policy: ft's adapter with non-zero B, saved in PEFT format for TRL's model
    policy = ft_models.from_pretrained(model_dir, dtype=torch.float32)
    ft_peft.apply_lora(policy, TARGETS, rank=RANK, alpha=ALPHA)
    batch = ft_data.collate_preference(ft_examples, pad_id=tok.pad_id)
    for seed in range(1, 50):  # an adapter that prefers some chosen and some rejected answers
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.5 * torch.randn_like(p))
            with ft_peft.disable_adapters(policy):
                reference = sequence_logps(policy, batch).logps
            _, stats = preference_loss(
                PreferenceLoss(), sequence_logps(policy, batch), reference, num_pairs=1
            )
        if 0.3 <= stats.metrics()["rewards/accuracies"] <= 0.7:
            break
    ft_peft.save_adapter(policy, root / "adapter", base_model_name_or_path=str(model_dir))
    # a second model for full fine-tuning: the reference is a frozen, perturbed copy
    ref_hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in ref_hf.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref_hf.save_pretrained(root / "reference")
    return {
        "root": root,
        "model_dir": model_dir,
        "tok": tok,
        "ft_examples": list(ft_examples),
        "trl_examples": list(trl_examples),
        "policy": policy,
        "hf_tok": AutoTokenizer.from_pretrained(model_dir),
    }


class _Capture(TrainerCallback):
    def __init__(self) -> None:
        self.logs: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        self.logs.update(logs or {})


def _dpo_config(root: Path, cfg: PreferenceLoss, **kw) -> DPOConfig:
    return DPOConfig(
        output_dir=str(root / "trl"),
        bf16=False,
        fp16=False,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=len(PAIRS),
        gradient_checkpointing=False,
        max_length=None,
        loss_type=list(cfg.loss_type),
        loss_weights=list(cfg.weights),
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        save_strategy="no",
        **kw,
    )


def _trl_dpo(setup: dict, cfg: PreferenceLoss, *, lora: bool) -> dict[str, float]:
    """TRL's loss and metrics on the setup's batch (LoRA policy or full model with a frozen copy)."""
    root, model_dir = setup["root"], setup["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    kw: dict = {}
    if lora:
        kw["peft_config"] = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0)
    else:
        kw["ref_model"] = AutoModelForCausalLM.from_pretrained(root / "reference", dtype=torch.float32)
    capture = _Capture()
    trainer = DPOTrainer(
        model=model,
        args=_dpo_config(root, cfg),
        train_dataset=Dataset.from_list([{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]),
        processing_class=setup["hf_tok"],
        callbacks=[capture],
        **kw,
    )
    if lora:  # TRL's fresh adapter gets ft's weights: the reference stays the base (adapters disabled)
        missing = set_peft_model_state_dict(
            trainer.model, load_file(root / "adapter" / "adapter_model.safetensors")
        )
        assert not missing.unexpected_keys
    inputs = DataCollatorForPreference(pad_token_id=setup["hf_tok"].pad_token_id)(setup["trl_examples"])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    trainer.log({})
    return {"loss": float(loss), **{k: float(capture.logs[k]) for k in METRIC_NAMES}}


def _ft(setup: dict, cfg: PreferenceLoss, *, lora: bool, examples: list | None = None) -> dict[str, float]:
    batch = ft_data.collate_preference(examples or setup["ft_examples"], pad_id=setup["tok"].pad_id)
    if lora:
        model = setup["policy"]
        with torch.no_grad(), ft_peft.disable_adapters(model):
            reference = sequence_logps(model, batch).logps
    else:
        model = ft_models.from_pretrained(setup["model_dir"], dtype=torch.float32)
        frozen = ft_models.from_pretrained(setup["root"] / "reference", dtype=torch.float32)
        with torch.no_grad():
            reference = sequence_logps(frozen, batch).logps
    policy = sequence_logps(model, batch)
    loss, stats = preference_loss(
        cfg, policy, None if cfg.reference_free else reference, num_pairs=len(PAIRS)
    )
    return {"loss": float(loss.detach()), **stats.metrics()}


LOSSES = {
    "sigmoid": PreferenceLoss(("sigmoid",), beta=0.1),
    "hinge": PreferenceLoss(("hinge",), beta=0.3),
    "ipo": PreferenceLoss(("ipo",), beta=0.1),
    "robust": PreferenceLoss(("robust",), beta=0.1, label_smoothing=0.2),
    "sigmoid+ipo+hinge": PreferenceLoss(("sigmoid", "ipo", "hinge"), loss_weights=(0.7, 0.2, 1.5), beta=0.2),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LOSSES))
def test_lora_loss_and_metrics_equal_trl(setup: dict, name: str) -> None:
    cfg = LOSSES[name]
    ours, theirs = _ft(setup, cfg, lora=True), _trl_dpo(setup, cfg, lora=True)
    assert abs(theirs["rewards/chosen"]) > 0.05, theirs  # the adapter moves the policy off the reference
    assert 0 < theirs["rewards/accuracies"] < 1, theirs
    for key, value in theirs.items():
        assert close(ours[key], value), (name, key, ours[key], value)


@pytest.mark.slow
def test_frozen_copy_reference_equals_trl(setup: dict) -> None:
    cfg = LOSSES["sigmoid"]
    ours, theirs = _ft(setup, cfg, lora=False), _trl_dpo(setup, cfg, lora=False)
    assert abs(theirs["rewards/chosen"]) > 1e-3, theirs
    for key, value in theirs.items():
        assert close(ours[key], value), (key, ours[key], value)


@pytest.mark.slow
def test_simpo_equals_trl_cpo(setup: dict) -> None:
    cfg = PreferenceLoss(("simpo",), beta=2.0, simpo_gamma=0.4, label_smoothing=0.1)
    root, model_dir = setup["root"], setup["model_dir"]
    capture = _Capture()
    trainer = CPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=CPOConfig(
            output_dir=str(root / "cpo"),
            bf16=False,
            use_cpu=True,
            report_to="none",
            loss_type="simpo",
            cpo_alpha=0.0,
            beta=cfg.beta,
            simpo_gamma=cfg.simpo_gamma,
            label_smoothing=cfg.label_smoothing,
            save_strategy="no",
        ),
        train_dataset=Dataset.from_list([{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]),
        processing_class=setup["hf_tok"],
        callbacks=[capture],
    )
    pad = setup["hf_tok"].pad_token_id
    batch = {}
    for side in ("chosen", "rejected"):
        rows = [ex["prompt_ids"] + ex[f"{side}_ids"] for ex in setup["trl_examples"]]
        width = max(len(r) for r in rows)
        batch[f"{side}_input_ids"] = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        batch[f"{side}_attention_mask"] = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        batch[f"{side}_labels"] = torch.tensor(
            [
                [-100] * len(ex["prompt_ids"]) + ex[f"{side}_ids"] + [-100] * (width - len(r))
                for ex, r in zip(setup["trl_examples"], rows)
            ]
        )
    trainer.model.train()
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    ours = _ft(setup, cfg, lora=False)
    assert close(ours["loss"], float(loss)), (ours["loss"], float(loss))
    for key in METRIC_NAMES:
        if not key.startswith("logits/"):  # CPOTrainer averages logits over every position, padding too
            assert close(ours[key], metrics[key]), (key, ours[key], metrics[key])
    assert 0 < metrics["rewards/accuracies"] < 1
    # logits/* do not depend on the loss: the DPOTrainer definition, checked above, on this model
    dpo = _ft(setup, LOSSES["sigmoid"], lora=False)
    assert ours["logits/chosen"] == dpo["logits/chosen"]
    assert ours["logits/rejected"] == dpo["logits/rejected"]


@pytest.mark.slow
def test_wrong_variants_miss_trl(setup: dict) -> None:
    ipo = LOSSES["ipo"]
    theirs = _trl_dpo(setup, ipo, lora=True)
    ours = _ft(setup, ipo, lora=True)
    assert close(ours["loss"], theirs["loss"])
    # IPO without length normalisation: the summed log-ratios in the square
    batch = ft_data.collate_preference(setup["ft_examples"], pad_id=setup["tok"].pad_id)
    model = setup["policy"]
    with torch.no_grad(), ft_peft.disable_adapters(model):
        reference = sequence_logps(model, batch).logps
    policy = sequence_logps(model, batch)
    unnormalised = replace(policy, tokens=torch.ones_like(policy.tokens))
    wrong, _ = preference_loss(ipo, unnormalised, reference, num_pairs=len(PAIRS))
    assert abs(float(wrong) - theirs["loss"]) > 0.1 * theirs["loss"], (float(wrong), theirs["loss"])

    sigmoid = LOSSES["sigmoid"]
    theirs = _trl_dpo(setup, sigmoid, lora=True)
    # prompt tokens counted: every position after the first trained
    counted = []
    for ex in setup["ft_examples"]:
        full = {}
        for side in ("chosen", "rejected"):
            ids = ex[f"{side}_input_ids"]
            full[f"{side}_input_ids"] = ids
            full[f"{side}_labels"] = [*ids[1:], -100]
        counted.append(full)
    wrong_prompt = _ft(setup, sigmoid, lora=True, examples=counted)
    # (the loss hardly moves: policy and reference agree on the prompt, so its log-ratios nearly cancel)
    for key in ("logps/chosen", "logps/rejected"):
        assert abs(wrong_prompt[key] - theirs[key]) > 10, (key, wrong_prompt, theirs)
    # chosen and rejected swapped
    swapped = [
        {
            "chosen_input_ids": ex["rejected_input_ids"],
            "chosen_labels": ex["rejected_labels"],
            "rejected_input_ids": ex["chosen_input_ids"],
            "rejected_labels": ex["chosen_labels"],
        }
        for ex in setup["ft_examples"]
    ]
    wrong_swap = _ft(setup, sigmoid, lora=True, examples=swapped)
    assert math.isclose(wrong_swap["rewards/margins"], -theirs["rewards/margins"], rel_tol=1e-4)
    assert abs(wrong_swap["rewards/margins"] - theirs["rewards/margins"]) > 0.1
    assert not close(wrong_swap["loss"], theirs["loss"], tol=1e-3)
