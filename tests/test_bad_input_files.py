"""Bad-input corpus: foreign files (model directories, tokenizers, adapters) through real `tune run generate`.

Each case copies a real tiny model directory (an HF Llama written by transformers, with SmolLM2's
tokenizer) or a real adapter (written by ft-peft), breaks one thing in one file, and runs
`tune run generate` on it: exit 2, one `error:` line naming the file and the key or JSON path, no
traceback, nothing written or changed (``assert_refused``). Every case starts a torch process: slow.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input_support import assert_refused, tune
from safetensors.torch import load_file, save_file
from test_recipe_support import make_tiny

import ft_models
import ft_peft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model/`` (HF Llama + tokenizer) and ``adapter/`` (LoRA on q/v with non-zero B) that generate."""
    root = tmp_path_factory.mktemp("good")
    make_tiny(root)
    model = ft_models.from_pretrained(root / "model")
    ft_peft.apply_lora(model, ["q_proj", "v_proj"], rank=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ft_peft.save_adapter(model, root / "adapter")
    return root


def _generate(case: Path, adapter: bool = False) -> list[str]:
    args = ["run", "generate", "--config", "smollm2/135M_generate", f"model.path={case / 'model'}"]
    args += ["prompt=hello", "max_new_tokens=2", "device=cpu"]
    return [*args, f"adapter={case / 'adapter'}"] if adapter else args


def _case(good: Path, tmp_path: Path, what: str) -> Path:
    case = tmp_path / "case"
    shutil.copytree(good / "model", case / "model")
    if what == "adapter":
        shutil.copytree(good / "adapter", case / "adapter")
    return case


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(edit(data)), encoding="utf-8")


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        data[key] = value
        return data

    return edit


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_weights(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_the_good_files_generate(good: Path, tmp_path: Path) -> None:
    """Control: the untouched model and adapter run, so every refusal below comes from the one edit."""
    case = _case(good, tmp_path, "adapter")
    done = tune(*_generate(case, adapter=True), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


CONFIG, WEIGHTS = "config.json", "model.safetensors"
MODEL_CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("hidden-size-string", CONFIG, lambda p: _edit_json(p, _set("hidden_size", "64")), "'hidden_size'"),
    ("layers-zero", CONFIG, lambda p: _edit_json(p, _set("num_hidden_layers", 0)), "'num_hidden_layers'"),
    (
        "heads-null",
        CONFIG,
        lambda p: _edit_json(p, _set("num_attention_heads", None)),
        "'num_attention_heads'",
    ),
    ("vocab-list", CONFIG, lambda p: _edit_json(p, _set("vocab_size", [49152])), "'vocab_size'"),
    ("eps-negative", CONFIG, lambda p: _edit_json(p, _set("rms_norm_eps", -1e-5)), "'rms_norm_eps'"),
    (
        "kv-not-dividing",
        CONFIG,
        lambda p: _edit_json(p, _set("num_key_value_heads", 2)),
        "'num_attention_heads'",
    ),
    (
        "tie-string",
        CONFIG,
        lambda p: _edit_json(p, _set("tie_word_embeddings", "true")),
        "'tie_word_embeddings'",
    ),
    ("config-truncated", CONFIG, _truncate, "not valid JSON"),
    ("config-list", CONFIG, lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    ("weights-truncated", WEIGHTS, _truncate, "not a readable safetensors file"),
    (
        "weights-missing-tensor",
        WEIGHTS,
        lambda p: _edit_weights(p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
        "missing keys model.layers.1.mlp.up_proj.weight",
    ),
    (
        "weights-wrong-shape",
        WEIGHTS,
        lambda p: _edit_weights(p, lambda t: t.update({"model.norm.weight": torch.ones(7)})),
        "'model.norm.weight' has shape (7,)",
    ),
    (
        "weights-integer",
        WEIGHTS,
        lambda p: _edit_weights(
            p, lambda t: t.update({"model.norm.weight": torch.ones(60, dtype=torch.int32)})
        ),
        "'model.norm.weight' is stored as torch.int32",
    ),
]


@pytest.mark.parametrize(
    ("file", "edit", "text"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES]
)
def test_bad_model_directory(
    good: Path, tmp_path: Path, file: str, edit: Callable[[Path], None], text: str
) -> None:
    case = _case(good, tmp_path, "model")
    edit(case / "model" / file)
    assert_refused(*_generate(case), cwd=tmp_path, names=[str(case / "model" / file), text])


TOKENIZER_CASES: list[tuple[str, Callable[[Any], Any], str]] = [
    ("model-not-object", _set("model", "BPE"), "model: expected an object"),
    (
        "vocab-not-mapping",
        lambda d: {**d, "model": {**d["model"], "vocab": ["a", "b"]}},
        "model.vocab: expected",
    ),
    (
        "merge-not-pair",
        lambda d: {**d, "model": {**d["model"], "merges": [["Ġ", "t", "h"]]}},
        "model.merges[0]",
    ),
    ("added-without-id", lambda d: {**d, "added_tokens": [{"content": "<x>"}]}, "added_tokens[0].id"),
    ("pre-tokenizer-string", _set("pre_tokenizer", "ByteLevel"), "pre_tokenizer: expected null or an object"),
]


@pytest.mark.parametrize(
    ("edit", "where"), [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES]
)
def test_bad_tokenizer_json(good: Path, tmp_path: Path, edit: Callable[[Any], Any], where: str) -> None:
    case = _case(good, tmp_path, "model")
    _edit_json(case / "model" / "tokenizer.json", edit)
    assert_refused(*_generate(case), cwd=tmp_path, names=[str(case / "model" / "tokenizer.json"), where])


def test_tokenizer_json_that_is_not_json(good: Path, tmp_path: Path) -> None:
    case = _case(good, tmp_path, "model")
    path = case / "model" / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:3000])
    assert_refused(*_generate(case), cwd=tmp_path, names=[str(path), "truncated or invalid JSON"])


ADAPTER_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    (
        "weights-truncated",
        lambda a: _truncate(a / "adapter_model.safetensors"),
        "adapter_model.safetensors",
        "not a readable",
    ),
    (
        "config-list",
        lambda a: (a / "adapter_config.json").write_text("[4]"),
        "adapter_config.json",
        "expected a JSON object",
    ),
    (
        "rank-string",
        lambda a: _edit_json(a / "adapter_config.json", _set("r", "four")),
        "adapter_config.json",
        "r='four'",
    ),
    (
        "alpha-null",
        lambda a: _edit_json(a / "adapter_config.json", _set("lora_alpha", None)),
        "adapter_config.json",
        "lora_alpha",
    ),
    (
        "targets-unknown",
        lambda a: _edit_json(a / "adapter_config.json", _set("target_modules", ["qq_proj"])),
        "adapter_config.json",
        "target_modules",
    ),
    (
        "targets-empty",
        lambda a: _edit_json(a / "adapter_config.json", _set("target_modules", [])),
        "adapter_config.json",
        "target_modules is empty",
    ),
]


@pytest.mark.parametrize(
    ("edit", "file", "text"), [c[1:] for c in ADAPTER_CASES], ids=[c[0] for c in ADAPTER_CASES]
)
def test_bad_adapter(good: Path, tmp_path: Path, edit: Callable[[Path], None], file: str, text: str) -> None:
    case = _case(good, tmp_path, "adapter")
    edit(case / "adapter")
    assert_refused(*_generate(case, adapter=True), cwd=tmp_path, names=[str(case / "adapter" / file), text])
