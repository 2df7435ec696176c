"""The LoRA recipe asks ft-models what its base is: a GGUF base is written out as an HF directory for PEFT.

A tiny Llama (SmolLM2's tokenizer) is written by transformers as an HF directory and, with the same
fp32 weights, as a llama.cpp-layout GGUF file (``gguf_support``, the ft-models test writer). The LoRA
recipe runs one step on each. On the GGUF base it writes ``base/`` beside the adapter, names it as the
adapter's base, and transformers loads that directory with the original model's logits. The negative
control: on the HF directory the recipe writes no ``base/`` and names the directory itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM

from ft_recipes import lora_finetune_single_device as lora
from ft_recipes.runner import prepare, run

# ft-models' test-only GGUF writer (llama.cpp's names and q/k row order).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "ft-models" / "tests"))
from gguf_support import write_llama_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("gguf-base")
    model_dir, data = make_tiny(root)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    values = {**hf.config.to_dict(), "rope_theta": hf.config.rope_parameters["rope_theta"]}
    gguf_file = write_llama_gguf(root / "tiny.gguf", sd, values)
    return model_dir, gguf_file, data


def _run(out: Path, model: Path, tokenizer: Path, data: Path) -> None:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {tokenizer}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"output_dir: {out}\ndevice: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nmax_steps: 1\n"
    )
    run(prepare(lora, str(config)))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 49152, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def test_gguf_base_is_written_as_hf_and_an_hf_base_is_not(
    tiny: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model_dir, gguf_file, data = tiny
    out = tmp_path / "from-gguf"
    _run(out, gguf_file, model_dir, data)
    base = out / "base"
    assert (base / "config.json").is_file()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base.resolve())
    written = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(written), _logits(original), rtol=0, atol=1e-5)

    # Negative control: an HF base is used as it is (no copy written, the adapter names it).
    out = tmp_path / "from-hf"
    _run(out, model_dir, model_dir, data)
    assert not (out / "base").exists()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model_dir.resolve())
