"""Every file ft saves gets the mode a plain ``open()`` gives (``0o666`` minus the umask), weights included.

``tempfile.mkstemp`` creates ``0o600`` files, so weights written through it were private while the JSON
beside them was not. Checked under two umasks (so the expected mode really comes from the umask), for a
model directory with tokenizer files, an adapter directory, tokenizer files alone and a DCP checkpoint.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import ft_data
import ft_dist
import ft_models
import ft_peft

CONFIG = {
    "model_type": "llama",
    "vocab_size": 49152,  # SmolLM2's tokenizer
    "hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 1,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "head_dim": 10,
    "tie_word_embeddings": True,
}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def open_mode(directory: Path) -> int:
    """The permission bits of a file made with plain ``open()`` under the current umask."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(directory.iterdir()) if p.is_file()}


def wrong_modes(directory: Path, expected: int) -> dict[str, str]:
    return {name: oct(mode) for name, mode in modes(directory).items() if mode != expected}


@pytest.fixture(scope="module")
def tokenizer() -> ft_data.Tokenizer:
    return ft_data.load_tokenizer(ft_models.smollm2_gguf_path())


def _save_everything(root: Path, tok: ft_data.Tokenizer) -> dict[str, Path]:
    torch.manual_seed(0)
    model = ft_models.build_model(ft_models.DecoderConfig.from_hf_dict(CONFIG))
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tok.save_pretrained(tmp)
        extra = {p.name: p for p in Path(tmp).iterdir()}
        ft_models.save_pretrained(model, root / "model", extra_files=extra)
    tok.save_pretrained(root / "tokenizer")
    ft_peft.apply_lora(model, ["q_proj", "v_proj"], rank=2, alpha=4)
    ft_peft.save_adapter(model, root / "adapter")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ft_dist.save_checkpoint(
        root / "checkpoints",
        1,
        app_state={"train": ft_dist.ModelOptimizerState(model, optimizer, trainable_only=True)},
        rank_state=ft_dist.rng_state(),
    )
    return {
        "model": root / "model",
        "tokenizer": root / "tokenizer",
        "adapter": root / "adapter",
        "checkpoint": root / "checkpoints" / "step_1",
    }


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_saved_files_have_the_open_mode(tokenizer: ft_data.Tokenizer, tmp_path: Path, mask: int) -> None:
    with umask(mask):
        expected = open_mode(tmp_path)
        dirs = _save_everything(tmp_path, tokenizer)
    assert expected == 0o666 & ~mask
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= modes(dirs["model"]).keys()
    assert "adapter_model.safetensors" in modes(dirs["adapter"])
    assert {".metadata", "rank_0.pt", ft_dist.MARKER} <= modes(dirs["checkpoint"]).keys()
    for name, directory in dirs.items():
        assert wrong_modes(directory, expected) == {}, name


def test_the_check_sees_a_private_file(tmp_path: Path) -> None:
    """Wrong variant: a file made the way weights used to be (``mkstemp``) is flagged."""
    expected = open_mode(tmp_path)
    fd, name = tempfile.mkstemp(dir=tmp_path, prefix="weights")
    os.close(fd)
    assert wrong_modes(tmp_path, expected) == {Path(name).name: oct(0o600)}
