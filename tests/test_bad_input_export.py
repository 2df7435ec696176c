"""Bad-input corpus: ``tune export gguf``, through real `tune` processes.

Each case exits with status 2 and one `error:` line naming the option, file or setting, without a
traceback, and leaves every file in the working directory byte-identical, with no partial output:

* ``--type q3_k``: a tensor type the exporter does not write (refused before torch is imported);
* a source path that does not exist;
* an output path in a directory that does not exist;
* an output file that exists, without ``--force`` (the file is kept as it was);
* an adapter made for another model shape (every shape is checked before a weight changes);
* a Mistral model with a sliding window, which llama.cpp's ``llama`` architecture cannot run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_support import assert_refused

import ft_models
import ft_peft
from ft_models import llama_config, mistral_config


def _tiny(config: ft_models.DecoderConfig, directory: Path) -> ft_models.CausalLM:
    model = ft_models.build_model(config)
    model.reset_parameters()
    ft_models.save_pretrained(model, directory)
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama directory, an adapter made for a wider Llama, a windowed Mistral, an existing file."""
    root = tmp_path_factory.mktemp("bad-export")
    shape = {"vocab_size": 61, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    _tiny(
        llama_config("llama3.2-1b", **shape, hidden_size=32, intermediate_size=48, head_dim=8), root / "llama"
    )
    wide = _tiny(
        llama_config("llama3.2-1b", **shape, hidden_size=40, intermediate_size=48, head_dim=8), root / "w"
    )
    ft_peft.apply_lora(wide, ["q_proj", "v_proj"], rank=2, alpha=4)
    ft_peft.save_adapter(wide, root / "wide-adapter", base_model_name_or_path=str(root / "w"))
    _tiny(
        mistral_config("mistral-7b-v0.1", **shape, hidden_size=32, intermediate_size=48, head_dim=8),
        root / "mistral",
    )
    (root / "out").mkdir()
    (root / "out" / "taken.gguf").write_bytes(b"an earlier export")
    return root


def test_unsupported_tensor_type(workdir: Path) -> None:
    assert_refused(
        "export", "gguf", "llama", "out/x.gguf", "--type", "q3_k", cwd=workdir, names="--type 'q3_k'"
    )


def test_missing_source(workdir: Path) -> None:
    assert_refused("export", "gguf", "no-such-model", "out/x.gguf", cwd=workdir, names="no-such-model")


def test_output_in_a_missing_directory(workdir: Path) -> None:
    assert_refused(
        "export", "gguf", "llama", "nowhere/x.gguf", cwd=workdir, names=["nowhere", "does not exist"]
    )


def test_existing_output_needs_force(workdir: Path) -> None:
    assert_refused("export", "gguf", "llama", "out/taken.gguf", cwd=workdir, names=["taken.gguf", "--force"])


def test_adapter_that_does_not_fit(workdir: Path) -> None:
    assert_refused(
        "export",
        "gguf",
        "llama",
        "out/x.gguf",
        "--adapter",
        "wide-adapter",
        cwd=workdir,
        names="wide-adapter",
    )


def test_setting_llama_cpp_cannot_run(workdir: Path) -> None:
    assert_refused(
        "export", "gguf", "mistral", "out/x.gguf", cwd=workdir, names=["mistral", "sliding_window"]
    )
