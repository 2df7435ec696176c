"""The training recipes stream their checkpoint straight into the final form, with today's numbers.

The recipes build the model on the meta device, apply adapters (a quantised base quantises each weight as
it arrives) and the precision policy's storage dtypes there, then stream the checkpoint in. The
reference is the order the recipes used before, written with public API: ``from_pretrained`` in fp32,
the seed, ``apply_lora`` (QLoRA: quantising the fp32 weights) and ``set_trainable``, then
``apply_precision``. For LoRA, DoRA, QLoRA (NF4, int8, DoRA on NF4) and full fine-tuning under fp32,
bf16-mixed, bf16-pure and fp16, from an fp32 and a bf16 safetensors checkpoint and a GGUF file, every
state-dict tensor of the recipe's model is bit-identical to the reference's, with the same dtype and
``requires_grad``, and the parameters come in the same order (the optimizer's and the checkpoints').

Wrong variants that must differ: adapters created on meta and initialised naively (``to_empty`` +
``reset_adapter_parameters``: one draw per layer where building a layer draws three times), and a base
cast to bf16 before wrapping (DoRA's magnitude and QLoRA's codes then come from the rounded weights).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM

import ft_models
import ft_peft
from ft_recipes import full_finetune_single_device, lora_finetune_single_device, steps
from ft_recipes.runner import prepare
from ft_recipes.training import apply_precision, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "ft-models" / "tests"))
from gguf_support import write_llama_gguf

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 7


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("streaming")
    model_dir, data = make_tiny(root)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf.to(torch.bfloat16).save_pretrained(root / "bf16")
    sd = {k: v.float() for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    values = {**hf.config.to_dict(), "rope_theta": hf.config.rope_parameters["rope_theta"]}
    gguf = write_llama_gguf(root / "tiny.gguf", sd, values)
    return {"fp32": model_dir, "bf16": root / "bf16", "gguf": gguf, "tokenizer": model_dir, "data": data}


def _config(
    tmp_path: Path, ckpt: dict[str, Path], source: str, precision: str, lora: dict[str, Any] | None
) -> str:
    text = (
        f"model: {{_component_: from_pretrained, path: {ckpt[source]}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {ckpt['tokenizer']}}}\n"
        f"dataset: {{_component_: build_dataset, source: {ckpt['data']}, use_cache: false}}\n"
        f"output_dir: {tmp_path / 'out'}\ndevice: cpu\nprecision: {precision}\nseed: {SEED}\n"
        "batch_size: 2\nmax_seq_len: 64\n"
    )
    if lora is not None:
        options = "".join(f", {k}: {v}" for k, v in lora.items())
        text += f"lora: {{target_modules: [{', '.join(TARGETS)}], rank: 4, alpha: 8{options}}}\n"
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def _todays_order(path: Path, precision: str, lora: dict[str, Any] | None, variant: str) -> torch.nn.Module:
    """The model as the recipes built it before streaming (``variant`` != "today": a wrong variant)."""
    policy = resolve_precision(precision, "cpu")
    options = {"use_dora": False, "quantize": None, **(lora or {})}
    if variant == "naive-meta-init":
        model = ft_models.empty_model(ft_models.open_checkpoint(path).config)
        ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8, **options)
        model.to_empty(device="cpu")
        dense = ft_models.from_pretrained(path, dtype=torch.float32).state_dict()
        model.load_state_dict(dense, strict=False)
        model.tie_weights()
        for module in model.modules():
            if isinstance(module, ft_models.RotaryEmbedding):
                module.reset_parameters("cpu")
        steps.seed_everything(SEED)
        for _, layer in ft_peft.lora_modules(model):
            layer.reset_adapter_parameters()
    else:
        dtype = torch.bfloat16 if variant == "cast-first" else torch.float32
        model = ft_models.from_pretrained(path, dtype=dtype)
        steps.seed_everything(SEED)
        if lora is not None:
            ft_peft.apply_lora(model, TARGETS, rank=4, alpha=8, **options)
    if lora is not None:
        ft_peft.set_trainable(model)
    apply_precision(model, policy)
    return model


def _differences(model: torch.nn.Module, reference: torch.nn.Module) -> list[str]:
    ours, ref = model.state_dict(keep_vars=True), reference.state_dict(keep_vars=True)
    assert list(ours) == list(ref)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    return [
        key
        for key, t in ours.items()
        if t.dtype != ref[key].dtype
        or t.requires_grad != ref[key].requires_grad
        or not torch.equal(t.detach(), ref[key].detach())
    ]


CASES = {
    "lora-fp32": ("fp32", "fp32", {}),
    "lora-bf16-mixed": ("fp32", "bf16-mixed", {}),
    "lora-from-bf16": ("bf16", "bf16-mixed", {"dropout": 0.1}),
    "lora-from-gguf": ("gguf", "bf16-mixed", {}),
    "dora-bf16-mixed": ("fp32", "bf16-mixed", {"use_dora": True}),
    "dora-from-bf16-fp16": ("bf16", "fp16", {"use_dora": True}),
    "qlora-nf4": ("fp32", "bf16-mixed", {"quantize": "nf4"}),
    "qlora-nf4-from-bf16": ("bf16", "bf16-mixed", {"quantize": "nf4"}),
    "qlora-int8-fp32": ("fp32", "fp32", {"quantize": "int8"}),
    "qdora-fp4": ("fp32", "bf16-mixed", {"quantize": "fp4", "use_dora": True}),
    "full-bf16-mixed": ("fp32", "bf16-mixed", None),
    "full-bf16-pure-from-bf16": ("bf16", "bf16-pure", None),
    "full-fp16-from-gguf": ("gguf", "fp16", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_setup_equals_todays_order(checkpoints: dict[str, Path], tmp_path: Path, case: str) -> None:
    source, precision, lora = CASES[case]
    recipe = full_finetune_single_device if lora is None else lora_finetune_single_device
    run = recipe.setup(prepare(recipe, _config(tmp_path, checkpoints, source, precision, lora)).config)
    reference = _todays_order(checkpoints[source], precision, lora, "today")
    assert _differences(run.model, reference) == []
    assert all(not t.is_meta for t in run.model.state_dict().values())


@pytest.mark.parametrize(
    ("case", "variant", "differs"),
    [
        ("lora-bf16-mixed", "naive-meta-init", "lora_A.weight"),
        ("dora-bf16-mixed", "cast-first", "lora_magnitude_vector"),
        ("qlora-nf4", "cast-first", "weight_absmax"),
    ],
)
def test_wrong_orders_differ(
    checkpoints: dict[str, Path], tmp_path: Path, case: str, variant: str, differs: str
) -> None:
    source, precision, lora = CASES[case]
    run = lora_finetune_single_device.setup(
        prepare(lora_finetune_single_device, _config(tmp_path, checkpoints, source, precision, lora)).config
    )
    wrong = _todays_order(checkpoints[source], precision, lora, variant)
    different = _differences(run.model, wrong)
    layers = len(list(ft_peft.lora_modules(run.model)))
    assert sum(key.endswith(differs) for key in different) == layers, different  # every layer's


def test_a_loader_without_prepare_gets_the_older_order(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A user's model component that takes no ``prepare`` still works: it loads whole, then the recipe
    transforms the loaded model (the older order's memory, the same numbers)."""
    (tmp_path / "my_loader.py").write_text(
        "import ft_models\n\n\ndef load(path, dtype=None, device=None):\n"
        "    return ft_models.from_pretrained(path, dtype=dtype, device=device)\n"
    )
    lora = {"use_dora": True, "quantize": "nf4"}
    config = _config(tmp_path, checkpoints, "fp32", "bf16-mixed", lora)
    Path(config).write_text(Path(config).read_text().replace("from_pretrained", "my_loader.load"))
    recipe = lora_finetune_single_device
    run = recipe.setup(prepare(recipe, config).config)
    assert _differences(run.model, _todays_order(checkpoints["fp32"], "bf16-mixed", lora, "today")) == []
