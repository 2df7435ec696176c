"""Bad-input corpus: model-side settings and paths, through real `tune` processes.

Each case is refused with exit status 2, one `error:` line naming the key or file, no traceback, and
every file in the working directory byte-identical afterwards:

* ``attention=flash``: not one of the schema's kernel names (`tune validate`, no torch import);
* ``attention=sdpa`` on a Gemma 2 model whose layers soft-cap attention scores: SDPA cannot apply the
  cap, so the run is refused rather than silently uncapped (`tune run generate`);
* ``model.path`` naming a file that is neither a model directory nor a ``.gguf`` file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bad_input_support import assert_refused
from transformers import Gemma2Config, Gemma2ForCausalLM

import ft_data
import ft_models


def _generate_config(directory: Path, model_path: Path) -> Path:
    config = directory / "gen.yaml"
    config.write_text(
        f"model:\n  _component_: from_pretrained\n  path: {model_path}\n"
        f"tokenizer:\n  _component_: load_tokenizer\n  path: {directory / 'gemma'}\n"
        "device: cpu\nmax_new_tokens: 2\nprompt: hi\n"
    )
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny soft-capped Gemma 2 directory (SmolLM2's tokenizer beside it) and a generate config."""
    root = tmp_path_factory.mktemp("bad-models")
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    cfg = Gemma2Config(
        vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, attn_logit_softcapping=50.0,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(root / "gemma")
    tok.save_pretrained(root / "gemma")
    (root / "weights.bin").write_bytes(b"not a checkpoint")
    _generate_config(root, root / "gemma")
    return root


def test_unknown_attention_kernel_is_refused_by_the_schema(workdir: Path) -> None:
    line = assert_refused(
        "validate",
        "--recipe",
        "generate",
        "gen.yaml",
        "attention=flash",
        cwd=workdir,
        names=["attention", "flash"],
    )
    assert "'auto', 'sdpa', 'grouped', 'eager'" in line


def test_sdpa_on_a_soft_capped_model_is_refused(workdir: Path) -> None:
    line = assert_refused(
        "run",
        "generate",
        "--config",
        "gen.yaml",
        "attention=sdpa",
        cwd=workdir,
        names=["attention", "'sdpa'"],
    )
    assert "soft_cap(50.0)" in line
    assert "model.layers.0.self_attn" in line


def test_model_path_that_is_no_checkpoint_names_the_file(workdir: Path) -> None:
    assert_refused(
        "run", "generate", "--config", "gen.yaml", f"model.path={workdir / 'weights.bin'}",
        cwd=workdir, names=["weights.bin", "expected a model directory or a .gguf file"],
    )  # fmt: skip
