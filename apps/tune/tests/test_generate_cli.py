"""`tune run generate` end to end in real processes: the real SmolLM2 (GGUF) and an HF directory + PEFT adapter.

References are computed in this process by other code paths: ft-models' batch `generate` on the
prompt rendered with plain Jinja (SmolLM2), and transformers + PEFT's `generate` (tiny HF model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import torch
from tune_support import run_tune

import ft_data
import ft_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    path = ft_models.smollm2_gguf_path()
    return ft_models.from_pretrained(path, dtype=torch.float32).eval(), ft_data.load_tokenizer(path)


def _stops(tok: Any) -> list[int]:
    return sorted(
        {tok.eos_id, *(tok.special_tokens[m] for m in ("<|im_end|>",) if m in tok.special_tokens)} - {None}
    )


def _reference_reply(model: Any, tok: Any, messages: list[dict[str, str]], n: int) -> str:
    text = jinja2.Template(tok.chat_template).render(messages=messages, add_generation_prompt=True)
    ids = tok.encode(text, allow_special=True)
    new, lengths = ft_models.generate(model, torch.tensor([ids]), n, eos_token_id=_stops(tok))
    out = new[0, : int(lengths[0])].tolist()
    return str(tok.decode([t for t in out if t not in _stops(tok)]))


def test_one_prompt_streams_the_greedy_answer(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    question = "What is the capital of France?"
    out = run_tune(
        "run", "generate", "--config", "smollm2/135M_generate", f"prompt={question}", "max_new_tokens=24"
    )
    assert out.returncode == 0, out.stderr
    want = _reference_reply(model, tok, [{"role": "user", "content": question}], 24)
    assert "Paris" in want
    assert out.stdout == want + "\n"
    assert "device=cpu dtype=float32" in out.stderr


def test_chat_keeps_history_and_reuses_the_cache(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    q1, q2 = "What is the capital of France?", "And of Germany?"
    out = run_tune(
        "run", "generate", "--config", "smollm2/135M_generate", "max_new_tokens=24", input=f"{q1}\n{q2}\n"
    )
    assert out.returncode == 0, out.stderr
    r1 = _reference_reply(model, tok, [{"role": "user", "content": q1}], 24)
    history = [
        {"role": "user", "content": q1},
        {"role": "assistant", "content": r1},
        {"role": "user", "content": q2},
    ]
    r2 = _reference_reply(model, tok, history, 24)
    assert out.stdout == f"{r1}\n{r2}\n"
    reused = [line for line in out.stderr.splitlines() if "turn 2:" in line]
    assert reused, out.stderr
    assert int(reused[0].split(": ")[1].split()[0]) > 20
    # Wrong variant: without the history the second answer is a different one.
    assert _reference_reply(model, tok, [{"role": "user", "content": q2}], 24) != r2


def test_hf_directory_with_a_peft_adapter(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    lora.save_pretrained(adapter_dir)
    prompt = tok.encode("Once upon a time")
    stops = _stops(tok)

    def reference(model: Any) -> str:
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        return str(tok.decode([t for t in out if t not in stops]))

    with_adapter = reference(lora)
    with lora.disable_adapter():
        without = reference(lora)
    assert without != with_adapter  # the adapter changes the answer, so the check below sees it
    args = ["run", "generate", "--config", "smollm2/135M_generate", f"model.path={base_dir}"]
    args += [
        "prompt=Once upon a time",
        "chat_template=false",
        "max_new_tokens=12",
        "device=cpu",
        "precision=fp32",
    ]
    out = run_tune(*args, f"adapter={adapter_dir}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == with_adapter + "\n"
    plain = run_tune(*args)
    assert plain.stdout == without + "\n"
