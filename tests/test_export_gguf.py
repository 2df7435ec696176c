"""``tune export gguf`` in real processes: an ft LoRA training output (``base/`` + ``adapter/``, as the
LoRA recipe writes them) and a base with ``--adapter`` both become GGUF files that ft reads back as the
merged model, with SmolLM2's tokenizer and chat template in the file. A wrong variant (the base alone)
shows the adapter changed the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input_support import tune

import ft_data
import ft_models
import ft_peft
from ft_models import llama_config
from ft_recipes.export import GGUF_TYPES


def test_type_list_matches_the_writer() -> None:
    """The CLI refuses a bad --type before importing torch from its own copy of the list."""
    assert GGUF_TYPES == ft_models.GGUF_TENSOR_TYPES


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ft_models.CausalLM, ft_models.CausalLM]:
    """A training output: a tiny Llama with SmolLM2's tokenizer as ``base/`` and a LoRA ``adapter/``."""
    root = tmp_path_factory.mktemp("export") / "run"
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    config = llama_config(
        "llama3.2-1b", vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=12, tie_word_embeddings=True,
        rope=ft_models.RopeConfig(theta=5e5),  # Llama 3 scaling needs more than 6 frequencies to read back
    )  # fmt: skip
    torch.manual_seed(0)
    base = ft_models.build_model(config)
    base.reset_parameters(std=0.2)
    tok.save_pretrained(root / "tokenizer-files")
    extra = {p.name: p for p in (root / "tokenizer-files").iterdir()}
    ft_models.save_pretrained(base, root / "base", extra_files=extra)
    tuned = ft_models.from_pretrained(root / "base")
    ft_peft.apply_lora(tuned, ["q_proj", "k_proj", "v_proj", "down_proj"], rank=4, alpha=8)
    with torch.no_grad():
        for _, layer in ft_peft.lora_modules(tuned):
            layer.lora_B.weight.normal_(std=0.5)
    ft_peft.save_adapter(tuned, root / "adapter", base_model_name_or_path=str((root / "base").resolve()))
    ft_peft.merge_adapters(tuned)
    return root, base.eval(), tuned.eval()


@pytest.mark.parametrize("layout", ["training-output", "base-and-adapter"])
@torch.no_grad()
def test_export_merges_the_adapter(layout: str, trained: tuple[Path, Any, Any], tmp_path: Path) -> None:
    root, base, tuned = trained
    args = (
        [str(root)]
        if layout == "training-output"
        else [str(root / "base"), "--adapter", str(root / "adapter")]
    )
    done = tune(
        "export", "gguf", *args[:1], str(tmp_path / "m.gguf"), *args[1:], "--type", "f32", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert "adapter" in done.stdout
    loaded = ft_models.load_pretrained(tmp_path / "m.gguf")
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    expected = tuned(ids)
    torch.testing.assert_close(loaded.model(ids), expected, rtol=0, atol=1e-5)
    assert (base(ids) - expected).abs().max() > 1e-2  # wrong variant: the base alone
    meta = loaded.gguf_metadata or {}
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert meta["general.name"] == ("run" if layout == "training-output" else "base")
