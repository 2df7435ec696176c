"""Foreign model files are validated where they are read: one ``ConfigError``/``CheckpointError`` line
naming the file and the key, never a ``TypeError`` from ``int()`` or a model built from nonsense.

Each case edits one thing in a real directory written by transformers; the untouched directory loads
(the control that shows the checks do not refuse good files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from llama_support import LLAMA3_ROPE, make_hf, save_weights_only
from safetensors import safe_open
from safetensors.torch import save_file

import ft_models
from ft_models import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hf = make_hf("gqa4", tie=False, rope_scaling=LLAMA3_ROPE, seed=5)
    directory = tmp_path_factory.mktemp("good")
    hf.config.save_pretrained(directory)
    save_weights_only(hf, directory)
    # The Hub schema most files on the Hub use (transformers 5 writes rope_parameters instead).
    config = json.loads((directory / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(directory: Path, change: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key in drop:
        config.pop(key, None)
    for key, value in change.items():
        if "." in key:
            outer, inner = key.split(".")
            config[outer] = {**(config.get(outer) or {}), inner: value}
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return path


def test_untouched_directory_loads(good_dir: Path) -> None:
    model = ft_models.from_pretrained(good_dir)
    assert model.config.hidden_size == 64
    assert model.config.rope.rope_type == "llama3"


CONFIG_CASES: list[tuple[dict[str, Any], str]] = [
    ({"hidden_size": "64"}, "hidden_size"),
    ({"hidden_size": [64]}, "hidden_size"),
    ({"hidden_size": 64.0}, "hidden_size"),
    ({"vocab_size": True}, "vocab_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"num_attention_heads": -8}, "num_attention_heads"),
    ({"num_key_value_heads": 0}, "num_key_value_heads"),
    ({"num_key_value_heads": 3}, "num_attention_heads"),  # 8 heads are not a multiple of 3
    ({"intermediate_size": "96"}, "intermediate_size"),
    ({"head_dim": 0}, "head_dim"),
    ({"max_position_embeddings": -1}, "max_position_embeddings"),
    ({"rms_norm_eps": 0}, "rms_norm_eps"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps"),
    ({"rope_theta": 0}, "rope_theta"),
    ({"rope_theta": -10000.0}, "rope_theta"),
    ({"rope_scaling.factor": 0}, "rope_scaling.factor"),
    ({"rope_scaling.factor": "8"}, "rope_scaling.factor"),
    ({"rope_scaling.original_max_position_embeddings": 0}, "rope_scaling.original_max_position_embeddings"),
    ({"rope_scaling": [1]}, "rope_scaling"),
    ({"rope_parameters": "llama3"}, "rope_parameters"),
    ({"rope_parameters.rope_theta": 0}, "rope_parameters.rope_theta"),
    ({"rope_parameters.rope_theta": "1e4"}, "rope_parameters.rope_theta"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings"),
    ({"attention_bias": 1}, "attention_bias"),
    ({"bos_token_id": "1"}, "bos_token_id"),
    ({"eos_token_id": [2, "3"]}, "eos_token_id"),
    ({"layer_types": "full_attention"}, "layer_types"),
    ({"hidden_act": ["silu"]}, "hidden_act"),
    ({"sliding_window": 0}, "sliding_window"),
]


@pytest.mark.parametrize(("change", "key"), CONFIG_CASES, ids=[f"{k}={c}" for c, k in CONFIG_CASES])
def test_bad_config_value_names_file_and_key(
    good_dir: Path, tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    path = _edit_config(directory, change)
    with pytest.raises(ConfigError) as info:
        ft_models.from_pretrained(directory)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert f"'{key}'" in message, message
    assert "\n" not in message


def test_more_heads_than_hidden_size_without_head_dim(good_dir: Path, tmp_path: Path) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    path = _edit_config(directory, {"num_attention_heads": 128, "num_key_value_heads": 1}, drop=("head_dim",))
    with pytest.raises(ConfigError, match=rf"^{path}: key 'num_attention_heads' = 128 exceeds hidden_size"):
        ft_models.from_pretrained(directory)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "not valid JSON"),
        (b'{"model_type": "llama",', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"llama"', "expected a JSON object, got str"),
    ],
    ids=["empty", "truncated", "not-utf8", "list", "string"],
)
def test_config_that_is_not_a_json_object(
    good_dir: Path, tmp_path: Path, content: bytes, pattern: str
) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    (directory / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{directory / 'config.json'}: {pattern}"):
        ft_models.from_pretrained(directory)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


@pytest.mark.parametrize("keep", [0, 100, 0.5], ids=["empty", "header-cut", "half"])
def test_truncated_weights_name_the_file(good_dir: Path, tmp_path: Path, keep: float) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=rf"^{weights}: not a readable safetensors file"):
        ft_models.from_pretrained(directory)


def _shard(directory: Path) -> tuple[Path, Path]:
    """Split model.safetensors into two shards plus an index; drop the config dtype (read from a shard)."""
    tensors = _tensors(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    keys = sorted(tensors)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for name, part in zip(names, halves, strict=True):
        save_file({k: tensors[k] for k in part}, str(directory / name), metadata={"format": "pt"})
    index = {
        "metadata": {},
        "weight_map": {k: n for n, part in zip(names, halves, strict=True) for k in part},
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    _edit_config(directory, {}, drop=("torch_dtype", "dtype"))
    return directory / names[0], directory / "model.safetensors.index.json"


def test_sharded_directory_problems_are_named(good_dir: Path, tmp_path: Path) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    first, index = _shard(directory)
    assert ft_models.from_pretrained(directory).config.hidden_size == 64  # the control: it loads
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=rf"^{first}: not a readable safetensors file"):
        ft_models.from_pretrained(directory)
    first.write_bytes(data)
    good_index = index.read_text()
    index.write_text(json.dumps({"weight_map": ["model-00001-of-00002.safetensors"]}))
    with pytest.raises(CheckpointError, match=rf"^{index}: key 'weight_map' must be an object"):
        ft_models.from_pretrained(directory)
    index.write_text(good_index.replace('"model-00001-of-00002.safetensors"', '"../x.safetensors"', 1))
    with pytest.raises(CheckpointError, match=rf"^{index}: key 'weight_map\..*' = '\.\./x\.safetensors'"):
        ft_models.from_pretrained(directory)


def test_integer_weights_are_refused(good_dir: Path, tmp_path: Path) -> None:
    directory = _copy(good_dir, tmp_path / "m")
    weights = directory / "model.safetensors"
    tensors = _tensors(weights)
    tensors["model.norm.weight"] = torch.ones_like(tensors["model.norm.weight"], dtype=torch.int64)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=rf"^{weights}: tensor 'model\.norm\.weight' is stored as torch\.int64"
    ):
        ft_models.from_pretrained(directory)
