"""Recipe ``generate``: one prompt, or an interactive chat on stdin, streamed as tokens come.

``tune run generate --config smollm2/135M_generate prompt="Hi"`` answers one prompt;
``prompt=null`` reads one user turn per line from stdin and keeps the conversation (rendered with
the model's chat template; the KV cache keeps earlier turns, so each turn only feeds its new tokens).
The model comes from an HF directory, a GGUF file or a training output, optionally with a PEFT
adapter. Flow: setup (device, precision, model, tokenizer) -> generate -> cleanup.

Copy it with ``tune cp generate ./my_generate.py`` and run the copy with
``tune run ./my_generate.py --config ./my_generate.yaml``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ft_recipes._train_config import AttentionName
from ft_recipes.config import Component, Interval, NonNegativeFloat, PositiveFloat, PositiveInt, Seed

if TYPE_CHECKING:
    import torch

    from ft_models import KVCache

# torch and the model code are imported inside `main`, so `tune validate` checks this file's schema
# without paying for them.

__all__ = ["FILE_KEYS", "PROVIDED", "Config", "Sampling", "main"]

DISTRIBUTED = False
# The recipe passes these keywords itself (from `device` and `precision`).
PROVIDED = {"model": {"dtype", "device"}}
# Paths that must exist for a run (`tune validate` only warns unless --check-files).
FILE_KEYS = ("model.path", "tokenizer.path", "adapter")


@dataclass
class Sampling:
    """Next-token choice: ``temperature: 0`` is greedy; ``seed`` makes sampling repeatable.

    The bounds are ft-models' ``SamplingConfig`` rules, stated here so ``tune validate`` finds a bad
    value before a model is loaded.

    Attributes:
        temperature: >= 0; zero is greedy (the argmax), not a division by zero.
        top_k: >= 1, or null for off (keeping zero tokens would leave nothing to sample).
        top_p: In (0, 1], or null for off: the kept set's probability mass; zero would keep nothing.
        min_p: In [0, 1], or null: the fraction of the top probability a token needs (zero: off).
        repetition_penalty: > 0 (1: off; the logits are divided or multiplied by it, so zero or a
            negative value would erase or invert them).
        seed: An unsigned 64-bit seed, or null for a fresh one each run.
    """

    temperature: NonNegativeFloat = 0.0
    top_k: PositiveInt | None = None
    top_p: Annotated[float, Interval(0, 1, low_open=True)] | None = None
    min_p: Annotated[float, Interval(0, 1)] | None = None
    repetition_penalty: PositiveFloat = 1.0
    seed: Seed | None = 0


@dataclass
class Config:
    """Schema of a ``generate`` config (every key is checked, unknown keys are errors); ``max_new_tokens``
    is >= 1 and the sampling options carry ft-models' bounds (:class:`Sampling`)."""

    model: Component
    tokenizer: Component
    adapter: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    prompt: str | None = None
    system: str | None = None
    chat_template: bool = True
    max_new_tokens: PositiveInt = 256
    stop: list[str] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    # Decode through ft-models' compiled step (faster per token, above all at batch 1 on a CPU); the
    # first turn pays the compilation, so it pays off for long answers (bench/README.md, "Measurements
    # behind code choices").
    compile: bool = False
    attention: AttentionName = "auto"  # see ft_recipes.training.apply_attention


def _render(messages: list[dict[str, str]], tokenizer: Any, use_template: bool) -> str:
    """The prompt text for ``messages``: the model's chat template, or the bare last message."""
    if not use_template:
        return messages[-1]["content"]
    import ft_data

    apply = getattr(ft_data, "apply_chat_template", None)
    if apply is not None and tokenizer.chat_template:
        return str(apply(messages, tokenizer=tokenizer, add_generation_prompt=True))
    # ChatML (SmolLM2, Qwen) when no template engine or template is available.
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


@dataclass
class _Chat:
    """What a conversation keeps between turns: the model, its KV cache and the random generator."""

    model: Any
    tokenizer: Any
    stops: list[int]
    generator: torch.Generator
    cache: KVCache | None = None
    reused: int = 0


def _answer(chat: _Chat, messages: list[dict[str, str]], cfg: Config) -> str:
    """Stream one assistant answer to stdout and return its text.

    The cache keeps the conversation: ft-models keeps its longest common prefix with the new prompt
    and computes only the rest.
    """
    import ft_models

    text = _render(messages, chat.tokenizer, cfg.chat_template)
    prompt = chat.tokenizer.encode(text, allow_special=cfg.chat_template)
    s = cfg.sampling
    sampling = ft_models.SamplingConfig(
        do_sample=s.temperature > 0,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        repetition_penalty=s.repetition_penalty,
    )
    if chat.cache is None:
        chat.cache = chat.model.new_cache(1, len(prompt) + cfg.max_new_tokens)
    stats = ft_models.GenerationStats()
    stops = set(chat.stops)

    def decode(ids: Any) -> str:  # the stop token ends the turn; it is not part of the answer
        return str(chat.tokenizer.decode([i for i in ids if i not in stops]))

    pieces = []
    for chunk in ft_models.generate_stream(
        chat.model,
        [prompt],
        cfg.max_new_tokens,
        decode=decode,
        eos_token_id=chat.stops or None,
        stop_strings=cfg.stop or None,
        sampling=sampling,
        generator=chat.generator,
        cache=chat.cache,
        compile=cfg.compile,
        stats=stats,
    ):
        pieces.append(chunk.text[0])
        sys.stdout.write(chunk.text[0])
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    chat.reused = len(prompt) - stats.prompt_tokens
    return "".join(pieces)


def main(cfg: Config) -> None:
    """Set up, then answer the prompt or chat until stdin ends (or a line ``/exit``)."""
    import torch

    from ft_recipes._setup import load_model_and_tokenizer, pick_device, stop_token_ids
    from ft_recipes.training import apply_attention, resolve_inference_precision

    device = pick_device(cfg.device)
    precision = resolve_inference_precision(cfg.precision, device)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, cfg.tokenizer, cfg.adapter, device, precision.dtype
    )
    attention = apply_attention(model, cfg.attention, device=device, dtype=precision.dtype, training=False)
    dtype = str(precision.dtype).removeprefix("torch.")
    print(
        f"[generate] device={device} dtype={dtype} attention={attention} ({precision.reason})",
        file=sys.stderr,
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.sampling.seed if cfg.sampling.seed is not None else torch.seed())
    chat = _Chat(model, tokenizer, sorted(stop_token_ids(tokenizer)), gen)
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if cfg.prompt is not None:
        _answer(chat, [*messages, {"role": "user", "content": cfg.prompt}], cfg)
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = _answer(chat, messages, cfg)
        messages.append({"role": "assistant", "content": reply})
        print(f"[generate] turn {len(messages) // 2}: {chat.reused} cached tokens reused", file=sys.stderr)
