"""The generate recipe in process: an HF directory (tiny Llama, SmolLM2's tokenizer) against transformers.

The chat reads turns from stdin and keeps the KV cache between them; every reply must equal what
transformers generates greedily from the whole conversation rendered with the chat template (plain
Jinja here), so a cache that kept a wrong prefix would show.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import jinja2
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import ft_data
import ft_models
from ft_recipes.runner import prepare, run

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, LlamaForCausalLM]:
    """A Llama with GQA 3:1 and head_dim 24 != 60 / 3, saved with SmolLM2's real tokenizer."""
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=60,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=24,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    )
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path, tok, hf


def _config(tmp_path: Path, model_dir: Path) -> Path:
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"model:\n  _component_: from_pretrained\n  path: {model_dir}\n"
        "tokenizer:\n  _component_: load_tokenizer\n  path: ${model.path}\n"
        "device: cpu\nmax_new_tokens: 10\n"
    )
    return config


def _reference(hf: LlamaForCausalLM, tok: Any, messages: list[dict[str, str]], n: int = 10) -> str:
    text = jinja2.Template(tok.chat_template).render(messages=messages, add_generation_prompt=True)
    ids = tok.encode(text, allow_special=True)
    stops = [tok.eos_id, tok.special_tokens[END]]
    out = hf.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=0
    )
    return str(tok.decode([t for t in out[0, len(ids) :].tolist() if t not in stops]))


def _run(
    config: Path, overrides: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> tuple[str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    run(prepare("generate", str(config), overrides))
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_chat_turns_match_transformers_on_the_whole_history(
    tiny: tuple[Path, Any, LlamaForCausalLM],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    compile: bool,
) -> None:
    # compile=true: the same replies through ft-models' compiled decode step, cache kept across turns.
    model_dir, tok, hf = tiny
    q1, q2 = "Tell me a story.", "Shorter, please."
    overrides = [f"compile={str(compile).lower()}"]
    out, err = _run(_config(tmp_path, model_dir), overrides, f"{q1}\n{q2}\n", monkeypatch, capsys)
    r1 = _reference(hf, tok, [{"role": "user", "content": q1}])
    history = [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": r1},
        {"role": "user", "content": q2},
    ]
    r2 = _reference(hf, tok, history)
    assert len(set(tok.encode(r1 + r2))) >= 8  # a model repeating one token would prove nothing
    assert out == f"{r1}\n{r2}\n"
    turn2 = next(line for line in err.splitlines() if "turn 2:" in line)
    assert int(turn2.split(": ")[1].split()[0]) > 20  # the first turn came from the cache
    # Wrong variant: the second question alone gets another answer, so the history is what matched.
    assert _reference(hf, tok, [{"role": "user", "content": q2}]) != r2


def test_one_prompt_raw_and_seeded_sampling(
    tiny: tuple[Path, Any, LlamaForCausalLM], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    model_dir, tok, hf = tiny
    config = _config(tmp_path, model_dir)
    out, _ = _run(config, ["prompt=Once upon a time", "chat_template=false"], "", monkeypatch, capsys)
    ids = tok.encode("Once upon a time")
    stops = [tok.eos_id, tok.special_tokens[END]]
    ref = hf.generate(
        torch.tensor([ids]), max_new_tokens=10, do_sample=False, eos_token_id=stops, pad_token_id=0
    )
    assert out == tok.decode([t for t in ref[0, len(ids) :].tolist() if t not in stops]) + "\n"
    sample = ["prompt=Once upon a time", "sampling.temperature=1.0", "sampling.top_k=50"]
    a, _ = _run(config, [*sample, "sampling.seed=1"], "", monkeypatch, capsys)
    b, _ = _run(config, [*sample, "sampling.seed=1"], "", monkeypatch, capsys)
    c, _ = _run(config, [*sample, "sampling.seed=2"], "", monkeypatch, capsys)
    assert a == b
    assert a != c


def test_a_directory_written_by_ft_save_pretrained(
    tiny: tuple[Path, Any, LlamaForCausalLM], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # What a training run writes: ft's own save_pretrained, tokenizer files beside the weights.
    model_dir, tok, hf = tiny
    ours = ft_models.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer_files = {p.name: p for p in model_dir.iterdir() if p.name.startswith(("tokenizer", "special"))}
    saved = ft_models.save_pretrained(ours, tmp_path / "trained", extra_files=tokenizer_files)
    out, _ = _run(_config(tmp_path, saved), ["prompt=Hello"], "", monkeypatch, capsys)
    assert out == _reference(hf, tok, [{"role": "user", "content": "Hello"}]) + "\n"
