"""``ft_recipes.training.apply_attention``: the recipes' ``attention`` key put on the model, and its log text.

A tiny ft model (GQA 3:1, head_dim 12 != 48 / 6). The setting lands on every attention module; the log
text for ``auto`` names what ft-models' rule picks for the device, dtype, gradient mode and row length
(on a GPU: sdpa, so the CPU-only grouped path is visibly not in use); a bad name or a kernel that cannot
apply a family's score modifier is a one-line TrainingError naming ``attention``; each recipe's schema
copy of the names equals ft-models' list (recipe modules do not import torch at schema time).
"""

from __future__ import annotations

import typing
from types import ModuleType
from typing import Any

import pytest
import torch

import ft_models
from ft_recipes import eval as eval_recipe
from ft_recipes import (
    full_finetune_single_device,
    generate,
    lora_dpo_single_device,
    lora_finetune_single_device,
)
from ft_recipes.training import ATTENTION_CHOICES, TrainingError, apply_attention, describe_attention

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _tiny(model_type: str = "llama", **extra: Any) -> ft_models.CausalLM:
    config = ft_models.DecoderConfig.from_hf_dict(
        {"model_type": model_type, "vocab_size": 97, "hidden_size": 48, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 12,
         "max_position_embeddings": 64, **extra}
    )  # fmt: skip
    model = ft_models.build_model(config)
    model.reset_parameters()
    return model


def _kernel_types(model: ft_models.CausalLM) -> set[str]:
    return {type(layer.self_attn.kernel).__name__ for layer in model.model.layers}


@pytest.mark.parametrize(
    ("name", "kernel"),
    [("auto", "AutoKernel"), ("sdpa", "SDPAKernel"), ("grouped", "GroupedKernel"), ("eager", "EagerKernel")],
)
def test_every_layer_gets_the_named_kernel(name: str, kernel: str) -> None:
    model = _tiny()
    text = apply_attention(model, name, device=CPU, dtype=torch.float32, training=True, max_seq_len=64)
    assert _kernel_types(model) == {kernel}
    assert text.split(" ", 1)[0] == name


@pytest.mark.parametrize(
    ("device", "dtype", "training", "max_seq_len", "says"),
    [
        # bf16 training on a CPU: the grouped products for training calls, SDPA without gradients.
        (CPU, torch.bfloat16, True, 512, "auto -> grouped for training calls"),
        # calls longer than the grouped kernel's limit keep SDPA (a packed row's documents are calls).
        (CPU, torch.bfloat16, True, 2048, "auto -> grouped for training calls of at most 1024 keys"),
        (CUDA, torch.bfloat16, True, 512, "auto -> sdpa (not a CPU"),
        (CPU, torch.float32, True, 512, "auto -> sdpa (not bf16"),
        (CPU, torch.bfloat16, False, None, "auto -> sdpa (no gradients"),
    ],
    ids=["cpu-bf16-train", "cpu-bf16-long-rows", "cuda", "cpu-fp32", "generation"],
)
def test_auto_log_text_states_what_it_resolved_to(
    device: torch.device, dtype: torch.dtype, training: bool, max_seq_len: int | None, says: str
) -> None:
    model = _tiny()  # the description needs no device: nothing runs
    text = describe_attention(
        model, "auto", device=device, dtype=dtype, training=training, max_seq_len=max_seq_len
    )
    assert text.startswith(says), text


def test_score_modifying_models_log_their_eager_layers_and_refuse_sdpa() -> None:
    model = _tiny("gemma2", attn_logit_softcapping=5.0, sliding_window=4)
    text = apply_attention(model, "auto", device=CPU, dtype=torch.bfloat16, training=True, max_seq_len=64)
    assert text == "auto -> eager (score modifier kept on 2 of 2 layers)"
    for name in ("sdpa", "grouped"):
        with pytest.raises(TrainingError, match=rf"^attention: '{name}' cannot modify attention scores"):
            apply_attention(model, name, device=CPU, dtype=torch.bfloat16, training=True, max_seq_len=64)
    assert _kernel_types(model) == {"EagerKernel"}


def test_unknown_name_is_a_training_error_naming_the_key() -> None:
    model = _tiny()
    with pytest.raises(TrainingError, match=r"^attention: unknown kernel 'flash'") as info:
        apply_attention(model, "flash", device=CPU, dtype=torch.float32, training=True, max_seq_len=64)
    assert "\n" not in str(info.value)
    assert _kernel_types(model) == {"SDPAKernel"}  # untouched


@pytest.mark.parametrize(
    "recipe",
    [lora_finetune_single_device, full_finetune_single_device, lora_dpo_single_device, generate, eval_recipe],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_each_recipe_schema_names_ft_models_kernels(recipe: ModuleType) -> None:
    hints = typing.get_type_hints(recipe.Config)
    assert typing.get_args(hints["attention"]) == ft_models.ATTENTION_KERNELS == ATTENTION_CHOICES
    assert recipe.Config.__dataclass_fields__["attention"].default == "auto"
