"""Bad-input corpus: checkpoints that cannot be streamed into a training run, through real `tune run`.

The training recipes stream the checkpoint into a model built on the meta device (adapters and storage
dtypes applied first), so a broken checkpoint must be refused from its headers, before anything is read,
quantised or written. Each case runs `tune run lora_finetune_single_device` on a copy of a tiny HF
Llama (SmolLM2's tokenizer beside it) or a GGUF file with one thing broken: exit 2, one `error:` line
naming the file and the tensor, no traceback, no file in the case directory changed or added, and the
run's output directory holding no file at all: no resolved ``config.yaml`` (written only once setup has
succeeded), no GGUF base converted for PEFT, no checkpoint.

* a sharded directory whose index names a tensor its shard does not hold;
* a QLoRA run on a checkpoint with a transposed projection (refused before any layer is quantised);
* a GGUF base holding a tensor the architecture has no place for.

Each case starts a torch process: slow.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_support import assert_refused
from safetensors.torch import load_file, save_file
from test_recipe_support import make_tiny
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "ft-models" / "tests"))
from gguf_support import write_llama_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/`` (a tiny HF Llama with tokenizer, two shards) and ``train.jsonl``."""
    root = tmp_path_factory.mktemp("good-load")
    model_dir, _ = make_tiny(root)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sharded = root / "sharded"
    hf.save_pretrained(sharded, max_shard_size="200KB")
    assert len(list(sharded.glob("model-*.safetensors"))) >= 2
    return root


def _run(case: Path, model: Path, *overrides: str) -> list[str]:
    config = case / "cfg.yaml"
    config.write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {case / 'tokenizer'}}}\n"
        f"dataset: {{_component_: build_dataset, source: {case / 'train.jsonl'}, use_cache: false}}\n"
        f"output_dir: {case.parent / 'out'}\ndevice: cpu\nprecision: bf16-mixed\nbatch_size: 2\nmax_seq_len: 64\n"
    )
    return ["run", "lora_finetune_single_device", "--config", str(config), *overrides]


def _nothing_written(case: Path) -> None:
    out = case.parent / "out"
    assert [p for p in out.rglob("*") if p.is_file()] == []


def _case(good: Path, tmp_path: Path) -> Path:
    case = tmp_path / "case"
    shutil.copytree(good / "sharded", case / "model")
    shutil.copytree(good / "model", case / "tokenizer")
    shutil.copy(good / "train.jsonl", case / "train.jsonl")
    return case


def test_index_naming_a_tensor_its_shard_lacks(good: Path, tmp_path: Path) -> None:
    case = _case(good, tmp_path)
    index_path = case / "model" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = "model.layers.1.mlp.up_proj.weight"
    shard = index["weight_map"][key]
    other = next(name for name in sorted(set(index["weight_map"].values())) if name != shard)
    index["weight_map"][key] = other
    index_path.write_text(json.dumps(index))
    assert_refused(*_run(case, case / "model"), cwd=case, names=[other, key, "holds no tensor"])
    _nothing_written(case)


def test_qlora_on_a_transposed_projection_is_refused_before_quantising(good: Path, tmp_path: Path) -> None:
    case = _case(good, tmp_path)
    key = "model.layers.0.self_attn.q_proj.weight"
    index = json.loads((case / "model" / "model.safetensors.index.json").read_text())
    shard = case / "model" / index["weight_map"][key]
    tensors = load_file(shard)
    shape = tuple(tensors[key].shape)
    tensors[key] = tensors[key].t().contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    line = assert_refused(
        *_run(case, case / "model", "lora.quantize=nf4"), cwd=case, names=[shard.name, key, "has shape"]
    )
    assert f"the model expects {shape}" in line
    _nothing_written(case)


def test_gguf_base_with_a_tensor_of_no_known_place(good: Path, tmp_path: Path) -> None:
    case = _case(good, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(good / "model", dtype=torch.float32)
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    values = {**hf.config.to_dict(), "rope_theta": hf.config.rope_parameters["rope_theta"]}
    extra = {"blk.0.attn_qkv.weight": np.zeros((8, hf.config.hidden_size), np.float32)}
    gguf = write_llama_gguf(case / "tiny.gguf", sd, values, extra_tensors=extra)
    assert_refused(*_run(case, gguf), cwd=case, names=["tiny.gguf", "unknown tensor blk.0.attn_qkv.weight"])
    _nothing_written(case)  # no HF copy of the base was converted
