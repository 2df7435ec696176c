"""llama.cpp itself runs ft's GGUF exports of the real SmolLM2-135M-Instruct.

llama.cpp comes from the ``llama-cpp-python`` source distribution, built once and cached
(``tests/llama_cpp_support.py``), and runs in a child process. For ft's f16 export of the model and for
the export of a LoRA fine-tune merged into it, llama.cpp must (1) tokenize awkward strings (digits,
runs of spaces, emoji, scripts, chat markers, contractions) to ft's ids, with and without special-token
parsing, and (2) continue chat prompts with the same 32 greedy tokens as ft running the same file. A
broken export (q/k rows left in transformers' order instead of llama.cpp's interleaved RoPE pairs) must
change llama.cpp's tokens.

The fine-tuned model is a LoRA adapter made here on the same base in PEFT format (random, large enough
to change the answers), standing in for the 10-minute default job's adapter: the export path (training
output ``base/`` + ``adapter/``, merged by ``tune export gguf``) is the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bad_input_support import tune
from llama_cpp_support import LLAMA_CPP_PYTHON_VERSION, run_llama_cpp

import ft_data
import ft_models
import ft_peft
from ft_recipes.export import export_gguf

pytestmark = [pytest.mark.slow, pytest.mark.long]  # builds llama.cpp once (about 7 minutes), then cached

NEW_TOKENS = 32
STRINGS = [
    "3.14159 and 1234567890 and 2024-01-31, 007 x 42",
    "  two leading spaces,   three inside,\ttab\t\tand\n\nblank lines \n",
    "emoji 🦙🚀 😶‍🌫️ ✅ and flags 🇫🇷🇯🇵",
    "нещо на Български, 我想在apple工作1314151天～, كيف حالك, Straße naïve café",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL ``` \"\"\"...!!!",
]
CHATS = [
    [{"role": "user", "content": "Write a short story about a llama who learns to paint."}],
    [{"role": "user", "content": "Explain in detail why the sky is blue, for a ten-year-old."}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "List five uses of a paperclip and say why each works."},
    ],
]

_CHILD = r"""
import json, sys
import llama_cpp
request = json.load(open(sys.argv[1]))
llm = llama_cpp.Llama(request["model"], n_ctx=512, n_threads=2, seed=0, verbose=False)
out = {"version": llama_cpp.__version__, "special": [], "plain": [], "greedy": []}
for text in request["strings"]:
    out["special"].append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    out["plain"].append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
for prompt in request["prompts"]:
    tokens = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        tokens.append(int(token))
        if len(tokens) == request["new_tokens"]:
            break
    out["greedy"].append(tokens)
print(json.dumps(out))
"""


def _llama_cpp(model: Path, prompts: list[list[int]], tmp_path: Path) -> dict[str, Any]:
    request = tmp_path / f"{model.stem}.json"
    request.write_text(
        json.dumps({"model": str(model), "strings": STRINGS, "prompts": prompts, "new_tokens": NEW_TOKENS})
    )
    done = run_llama_cpp(_CHILD, str(request))
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"] == LLAMA_CPP_PYTHON_VERSION
    return result


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return ft_data.load_tokenizer(ft_models.smollm2_gguf_path())


@pytest.fixture(scope="module")
def prompts(tokenizer: Any) -> list[list[int]]:
    rendered = [
        ft_data.apply_chat_template(c, tokenizer=tokenizer, add_generation_prompt=True) for c in CHATS
    ]
    return [list(tokenizer.encode(text, allow_special=True)) for text in rendered]


@torch.no_grad()
def _ft_greedy(model: ft_models.CausalLM, prompts: list[list[int]]) -> list[list[int]]:
    out = []
    for prompt in prompts:
        ids, lengths = ft_models.generate(model, [prompt], NEW_TOKENS)
        out.append(ids[0, : int(lengths[0])].tolist())
    return out


def _unpermute_rotary(model: ft_models.CausalLM) -> None:
    """Put each q/k projection's rows in the order the exporter's llama.cpp permutation turns back into
    transformers' order: the file then holds unpermuted rows (the broken variant)."""
    c = model.config
    with torch.no_grad():
        for layer in model.model.layers:
            for proj, heads in (
                (layer.self_attn.q_proj, c.num_attention_heads),
                (layer.self_attn.k_proj, c.num_key_value_heads),
            ):
                w = proj.weight
                half = w.shape[0] // heads // 2
                w.copy_(w.reshape(heads, half, 2, -1).transpose(1, 2).reshape(w.shape))


def _check_tokens(result: dict[str, Any], tokenizer: Any) -> None:
    for text, special, plain in zip(STRINGS, result["special"], result["plain"], strict=True):
        assert special == tokenizer.encode(text, allow_special=True), text
        assert plain == tokenizer.encode(text), text


def test_llama_cpp_runs_the_f16_export(tokenizer: Any, prompts: list[list[int]], tmp_path: Path) -> None:
    src = ft_models.smollm2_gguf_path()
    export_gguf(str(src), tmp_path / "smollm2-f16.gguf", tensor_type="f16")
    ft_model = ft_models.from_pretrained(tmp_path / "smollm2-f16.gguf")  # the file's own weights, fp32
    result = _llama_cpp(tmp_path / "smollm2-f16.gguf", prompts, tmp_path)
    _check_tokens(result, tokenizer)
    expected = _ft_greedy(ft_model, prompts)
    assert all(len(e) == NEW_TOKENS for e in expected)
    assert all(len(set(e)) >= 8 for e in expected)  # real answers, not one repeated token
    assert result["greedy"] == expected
    # Wrong variant: q/k rows not permuted the way llama.cpp's RoPE expects.
    _unpermute_rotary(ft_model)
    ft_models.save_gguf(
        ft_model,
        tmp_path / "broken.gguf",
        metadata=ft_data.gguf_tokenizer_metadata(tokenizer, vocab_size=ft_model.config.vocab_size),
    )
    broken = _llama_cpp(tmp_path / "broken.gguf", prompts, tmp_path)
    assert broken["greedy"] != expected
    assert sum(a != b for x, y in zip(broken["greedy"], expected) for a, b in zip(x, y)) > NEW_TOKENS


def test_llama_cpp_runs_a_merged_lora_export(
    tokenizer: Any, prompts: list[list[int]], tmp_path: Path
) -> None:
    """A training output (``base/`` + LoRA ``adapter/``) exported merged by the real CLI."""
    run = tmp_path / "run"
    run.mkdir()
    base = ft_models.from_pretrained(ft_models.smollm2_gguf_path())
    tokenizer.save_pretrained(tmp_path / "tok")
    extra = {p.name: p for p in (tmp_path / "tok").iterdir()}
    ft_models.save_pretrained(base, run / "base", extra_files=extra)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # A fixed adapter: the greedy tokens of some random ones hold near-ties (two logits within llama.cpp's
    # f16 rounding of the activations), where the two runtimes may rightly pick different tokens.
    torch.manual_seed(0)
    ft_peft.apply_lora(base, targets, rank=8, alpha=16)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for _, layer in ft_peft.lora_modules(base):
            layer.lora_B.weight.copy_(0.02 * torch.randn(layer.lora_B.weight.shape, generator=generator))
    ft_peft.save_adapter(base, run / "adapter", base_model_name_or_path=str((run / "base").resolve()))
    done = tune("export", "gguf", str(run), str(tmp_path / "tuned.gguf"), cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    ft_model = ft_models.from_pretrained(tmp_path / "tuned.gguf")
    result = _llama_cpp(tmp_path / "tuned.gguf", prompts, tmp_path)
    _check_tokens(result, tokenizer)
    expected = _ft_greedy(ft_model, prompts)
    assert result["greedy"] == expected
    # The adapter changed the answers (else this would only repeat the base model's check).
    untuned = _ft_greedy(ft_models.from_pretrained(ft_models.smollm2_gguf_path()), prompts)
    assert untuned != expected
