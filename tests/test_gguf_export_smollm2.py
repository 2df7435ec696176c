"""ft's GGUF export of the real SmolLM2-135M-Instruct against the file llama.cpp's converter made of it.

* The metadata: every architecture and tokenizer key of the shipped file (written by llama.cpp's
  ``convert_hf_to_gguf.py``, then quantised) comes out of ft's q8_0 export with the same value and value
  type; ft adds only keys the converter writes for other models.
* q8_0: every weight reads back within its block quantiser's error (half a step of ``amax / 127`` per
  32 values, plus the f16 rounding of the block's scale) and the model continues three chat prompts with the same 32 greedy tokens as the source.
  Wrong variant: the file read back without undoing the q/k permutation changes the tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import ft_data
import ft_models

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
CHATS = [
    [{"role": "user", "content": "What are three good reasons to learn to cook at home?"}],
    [{"role": "user", "content": "Rewrite this date as YYYY-MM-DD. Reply with the date only: 3 July 1999"}],
    [{"role": "user", "content": "Write a haiku about the sea, then explain it."}],
]
# Descriptive keys the converter takes from the model card; the file type is the export's own.
_DESCRIPTIVE = {
    "general.name", "general.organization", "general.finetune", "general.basename", "general.size_label",
    "general.license", "general.languages", "general.file_type",
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ft_models.CausalLM, Path, Any]:
    source = ft_models.smollm2_gguf_path()
    model = ft_models.from_pretrained(source)
    tok = ft_data.load_tokenizer(source)
    meta = ft_data.gguf_tokenizer_metadata(tok, vocab_size=model.config.vocab_size)
    path = ft_models.save_gguf(
        model, tmp_path_factory.mktemp("q8") / "q8.gguf", tensor_type="q8_0", metadata=meta
    )
    return model, path, tok


def test_metadata_as_llama_cpp_wrote_it(exported: tuple[ft_models.CausalLM, Path, Any]) -> None:
    _, path, _ = exported
    original = gguf.GGUFReader(ft_models.smollm2_gguf_path()).fields
    written = gguf.GGUFReader(path).fields
    skipped = _DESCRIPTIVE | {"tokenizer.ggml.unknown_token_id"}  # llama.cpp's BPE never uses it
    for key, field in original.items():
        if key.startswith("GGUF.") or key in skipped:
            continue
        assert key in written, key
        assert list(written[key].types) == list(field.types), key
        assert written[key].contents() == field.contents(), key
    extra = set(written) - set(original)
    assert extra <= {
        "llama.attention.key_length", "llama.attention.value_length", "tokenizer.ggml.add_eos_token",
    }  # fmt: skip
    assert int(written["general.file_type"].contents()) == gguf.LlamaFileType.MOSTLY_Q8_0


@torch.no_grad()
def test_q8_0_within_quantisation_error_and_same_greedy_tokens(
    exported: tuple[ft_models.CausalLM, Path, Any],
) -> None:
    model, path, tok = exported
    back = ft_models.from_pretrained(path)
    src, got = model.state_dict(), back.state_dict()
    for key, value in src.items():
        if value.dim() < 2:
            assert torch.equal(got[key], value), key
            continue
        blocks = value.reshape(-1, 32).abs().amax(dim=1, keepdim=True)
        bound = (0.5 / 127 + 2.0**-11) * blocks + 1e-7  # half a step, plus the f16 scale's rounding
        assert ((got[key] - value).reshape(-1, 32).abs() <= bound).all(), key
    prompts = [
        tok.encode(
            ft_data.apply_chat_template(c, tokenizer=tok, add_generation_prompt=True), allow_special=True
        )
        for c in CHATS
    ]

    def greedy(m: ft_models.CausalLM) -> list[list[int]]:
        return [ft_models.generate(m, [p], NEW_TOKENS)[0][0].tolist() for p in prompts]

    expected = greedy(model)
    assert all(len(set(e)) >= 8 for e in expected)
    assert greedy(back) == expected
    # Wrong variant: the q/k rows as the file stores them (llama.cpp's interleaved order), i.e. what a
    # reader that does not undo the converter's row permutation would load.
    unpermuted = ft_models.from_pretrained(path)
    with torch.no_grad():
        for layer in unpermuted.model.layers:
            attn = layer.self_attn
            for proj, heads in ((attn.q_proj, attn.num_heads), (attn.k_proj, attn.num_kv_heads)):
                w = proj.weight  # [heads * h_d, d]
                rows = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2)
                w.copy_(rows.reshape(w.shape))
    assert greedy(unpermuted) != expected
    assert np.isfinite(back(torch.tensor([prompts[0]])).numpy()).all()
