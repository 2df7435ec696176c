"""Streaming token generation on a caller-owned KV cache, with temperature / top-k / top-p sampling.

The cache holds exactly the tokens fed so far (``Session.context``). A new turn feeds only the tokens
that extend that context, so a chat's earlier turns are never recomputed; if the new rendering does
not start with the cached tokens (a template that rewrites history), the cache is rebuilt. Nucleus
(top-p) sampling follows Holtzman et al., "The Curious Case of Neural Text Degeneration" (2019).

Shape legend: v vocabulary, s new tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ft_models import CausalLM, KVCache

__all__ = ["SamplingOptions", "Session", "TextStream", "sample", "warp"]


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is picked. ``temperature <= 0`` is greedy (top-k / top-p unused)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


def warp(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Scores ``[v]`` to sample from: divided by the temperature, then top-k, then top-p filtered (-inf)."""
    scores = logits.float() / opts.temperature  # [v]
    if opts.top_k is not None and 0 < opts.top_k < scores.numel():
        kth = scores.topk(opts.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if opts.top_p is not None and 0 < opts.top_p < 1:
        sorted_scores, order = scores.sort(descending=True)  # [v]
        probs = sorted_scores.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop = probs.cumsum(-1) - probs >= opts.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    return scores


def sample(logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None) -> int:
    """Pick one token from ``logits`` ``[v]`` (argmax when ``opts.temperature <= 0``)."""
    if opts.temperature <= 0:
        return int(logits.argmax())
    probs = warp(logits, opts).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Session:
    """A model, its cache and the tokens the cache holds; one per conversation."""

    model: CausalLM
    device: torch.device
    context: list[int] = field(default_factory=list)
    cache: KVCache | None = None
    reused: int = 0

    def _feed(self, ids: Sequence[int]) -> torch.Tensor:
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)  # [1, s]
        hidden = self.model(x, cache=self.cache, return_hidden=True)  # [1, s, d]
        self.context.extend(int(i) for i in ids)
        return self.model.output_projection(hidden[0, -1]).float()  # [v]

    @torch.inference_mode()
    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        opts: SamplingOptions,
        stop_ids: set[int],
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Yield new tokens for the full ``prompt`` (reusing the cached prefix), stopping at ``stop_ids``.

        A yielded stop token is the last one; it is fed to the cache only if the next turn needs it.
        """
        n = len(self.context)
        if self.cache is None or n == 0 or n >= len(prompt) or list(prompt[:n]) != self.context:
            self.cache = self.model.new_cache(1, len(prompt) + max_new_tokens)
            self.context, self.reused = [], 0
        else:
            self.reused = n
        logits = self._feed(prompt[len(self.context) :])
        for step in range(max_new_tokens):
            token = sample(logits, opts, generator)
            yield token
            if token in stop_ids or step + 1 == max_new_tokens:
                return
            logits = self._feed([token])


class TextStream:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self.decode, self.ids, self.shown = decode, list[int](), 0

    def push(self, token: int) -> str:
        """The new text after ``token`` (empty while a multi-byte character is incomplete)."""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown :], len(text)
        return piece
