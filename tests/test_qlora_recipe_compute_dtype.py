"""QLoRA's compute dtype follows the run's precision, through the LoRA recipe's own setup.

fp32 runs dequantise the frozen base to fp32, bf16-mixed and bf16-pure to bf16, fp16 to fp16 (before,
every run dequantised to bf16 and rounded an fp32 run's base products to bf16).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_recipe_support import make_tiny

import ft_peft
from ft_recipes import steps
from ft_recipes.runner import prepare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("qlora-dtype"))


def _setup(tmp_path: Path, tiny: tuple[Path, Path], precision: str):  # type: ignore[no-untyped-def]
    from ft_recipes import lora_finetune_single_device as recipe

    model_dir, data = tiny
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
model: {{_component_: from_pretrained, path: {model_dir}}}
tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}
dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}
output_dir: {tmp_path / "out"}
device: cpu
precision: {precision}
batch_size: 2
packed: false
max_seq_len: 64
lora: {{target_modules: [q_proj, v_proj, down_proj], rank: 4, alpha: 8, quantize: nf4}}
""")
    return recipe.setup(prepare(recipe, str(path)).config)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("fp32", torch.float32), ("bf16-mixed", torch.bfloat16), ("fp16", torch.float16)],
)
def test_quantised_base_computes_in_the_policy_dtype(
    tiny: tuple[Path, Path], tmp_path: Path, precision: str, dtype: torch.dtype
) -> None:
    run = _setup(tmp_path, tiny, precision)
    layers = [layer for _, layer in ft_peft.lora_modules(run.model)]
    assert len(layers) == 6
    assert {layer.quant.compute_dtype for layer in layers} == {dtype}
    # A real step runs in that precision (fp16 through the gradient scaler).
    batches = steps.micro_batches(run.loader, 0)
    loss, trained, _ = steps.forward_backward(run.model, [next(batches)], run.device, run.scaler)
    assert trained > 0
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.grad is not None for layer in layers for p in layer.adapter_parameters())

    layer = layers[0]
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    layer.adapter_enabled = False
    with torch.no_grad():
        base = layer(x.to(dtype)).float()
        expected = F.linear(x.to(dtype), layer.dense_weight(dtype), None).float()
        torch.testing.assert_close(base, expected, atol=0, rtol=0)
        if dtype == torch.float32:
            # Wrong variant: the former fixed bf16 compute rounds an fp32 run's base output.
            rounded = F.linear(x.bfloat16(), layer.dense_weight(torch.bfloat16), None).float()
            assert (base - rounded).abs().max() > 1e-3
