"""Malformed adapter files are refused where they are read, naming the file and the key, model untouched.

The adapter is written by PEFT itself (``save_pretrained``); each case edits one thing. The untouched
directory loads and reproduces PEFT's logits (the control that shows the checks refuse only bad files).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft_support import randomize_adapters, tiny_llama
from safetensors.torch import load_file, save_file

import ft_peft
from ft_peft.errors import AdapterFormatError


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_llama()


@pytest.fixture(scope="module")
def peft_dir(base: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    config = LoraConfig(target_modules=["q_proj", "v_proj"], r=3, lora_alpha=5, lora_dropout=0.1)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    randomize_adapters(peft_model, seed=2)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    ids = torch.randint(0, 131, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
    return out, expected


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_untouched_adapter_loads_like_peft(
    base: torch.nn.Module, peft_dir: tuple[Path, torch.Tensor]
) -> None:
    directory, expected = peft_dir
    model = copy.deepcopy(base)
    ft_peft.load_adapter(model, directory)
    ids = torch.randint(0, 131, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


CONFIG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("r-string", {"r": "four"}, "r='four' must be a positive integer"),
    ("r-zero", {"r": 0}, "r=0 must be a positive integer"),
    ("r-float", {"r": 3.5}, "r=3.5 must be a positive integer"),
    ("r-bool", {"r": True}, "r=True must be a positive integer"),
    ("alpha-null", {"lora_alpha": None}, "lora_alpha=None must be a number"),
    ("alpha-string", {"lora_alpha": "5"}, "lora_alpha='5' must be a number"),
    ("targets-empty", {"target_modules": []}, "target_modules is empty"),
    (
        "targets-unknown",
        {"target_modules": ["qq_proj"]},
        "target_modules: LlamaForCausalLM: target module 'qq_proj'",
    ),
    ("targets-number", {"target_modules": 5}, "target_modules=5 must be a list of module names or a regex"),
    (
        "targets-bad-regex",
        {"target_modules": ".*(q_proj"},
        "target_modules: '.*(q_proj' is not a valid regex",
    ),
    (
        "targets-regex-no-match",
        {"target_modules": ".*nothing"},
        "target_modules: LlamaForCausalLM: target_modules",
    ),
    ("dropout-range", {"lora_dropout": 1.5}, "lora_dropout=1.5 must be a number in [0, 1)"),
    ("dora-string", {"use_dora": "no"}, "use_dora='no' must be true or false"),
    ("rank-pattern-list", {"rank_pattern": [1]}, "rank_pattern must be an object of regex -> value"),
    (
        "rank-pattern-value",
        {"rank_pattern": {"q_proj": "x"}},
        "rank_pattern['q_proj']='x' must be a positive integer",
    ),
    ("alpha-pattern-regex", {"alpha_pattern": {"((": 2}}, "alpha_pattern['((']: "),
    ("missing-r", {"r": None, "_drop": "r"}, "missing key 'r'"),
]


@pytest.mark.parametrize(("change", "text"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_adapter_config_names_file_and_key(
    base: torch.nn.Module,
    peft_dir: tuple[Path, torch.Tensor],
    tmp_path: Path,
    change: dict[str, Any],
    text: str,
) -> None:
    directory = _copy(peft_dir[0], tmp_path / "adapter")
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    change = dict(change)
    drop = change.pop("_drop", None)
    config.update(change)
    if drop:
        del config[drop]
    path.write_text(json.dumps(config))
    model = copy.deepcopy(base)
    with pytest.raises(AdapterFormatError) as info:
        ft_peft.load_adapter(model, directory)
    message = str(info.value)
    assert message.startswith(f"{path}: {text}"), message
    assert "\n" not in message
    assert list(ft_peft.lora_modules(model)) == []  # nothing was wrapped


@pytest.mark.parametrize("content", [b"[1, 2]", b'"lora"', b"null", b'{"r": 3,', b"\xff\xfe"])
def test_adapter_config_that_is_not_an_object(
    base: torch.nn.Module, peft_dir: tuple[Path, torch.Tensor], tmp_path: Path, content: bytes
) -> None:
    directory = _copy(peft_dir[0], tmp_path / "adapter")
    path = directory / "adapter_config.json"
    path.write_bytes(content)
    with pytest.raises(AdapterFormatError, match=rf"^{path}: (expected a JSON object|not valid JSON)"):
        ft_peft.load_adapter(copy.deepcopy(base), directory)


@pytest.mark.parametrize("keep", [0, 40, 0.5], ids=["empty", "header-cut", "half"])
def test_truncated_adapter_weights(
    base: torch.nn.Module, peft_dir: tuple[Path, torch.Tensor], tmp_path: Path, keep: float
) -> None:
    directory = _copy(peft_dir[0], tmp_path / "adapter")
    weights = directory / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    model = copy.deepcopy(base)
    with pytest.raises(AdapterFormatError, match=rf"^{weights}: not a readable safetensors file"):
        ft_peft.load_adapter(model, directory)
    assert list(ft_peft.lora_modules(model)) == []


def test_integer_adapter_weights(
    base: torch.nn.Module, peft_dir: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    directory = _copy(peft_dir[0], tmp_path / "adapter")
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, str(weights))
    with pytest.raises(AdapterFormatError, match=rf"^{weights}: key '{key}' holds torch\.int32"):
        ft_peft.load_adapter(copy.deepcopy(base), directory)
