"""Token selection: greedy, temperature sampling with top-k / nucleus (top-p) / min-p truncation.

The filters follow their papers: top-k (Fan et al. 2018, arXiv:1805.04833), nucleus sampling (Holtzman
et al. 2019, arXiv:1904.09751: keep the smallest set of most likely tokens whose mass reaches ``p``),
min-p (Nguyen et al. 2024, arXiv:2407.01082: keep tokens at least ``min_p`` times as likely as the
most likely one) and the CTRL repetition penalty (Keskar et al. 2019, arXiv:1909.05858: a seen
token's positive logit is divided by the penalty, a negative one multiplied). They are applied in
the order penalty, temperature, top-k, top-p, min-p (min-p after temperature, as llama.cpp does), and
every filter keeps at least ``min_keep`` tokens. Everything stays on the device: no host sync per step.

Shape legend: b rows, v vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplingConfig", "filter_min_p", "filter_top_k", "filter_top_p", "process_logits", "select"]


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits.

    Attributes:
        do_sample: Draw from the (filtered) distribution; ``False`` takes the argmax (greedy), still
            after the repetition penalty.
        temperature: Divides the logits before the filters; ``0`` means greedy.
        top_k: Keep the ``k`` most likely tokens (``None`` or 0: off).
        top_p: Keep the smallest most-likely set with mass ``>= top_p`` (``None`` or 1: off).
        min_p: Keep tokens with probability ``>= min_p * max probability`` (``None`` or 0: off).
        repetition_penalty: ``> 1`` discourages tokens already in the prompt or the output.
    """

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"SamplingConfig.min_p must be in [0, 1], got {self.min_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"SamplingConfig.repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken (no sampling or temperature 0)."""
        return not self.do_sample or self.temperature == 0.0


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the ``k``-th largest of its row to ``-inf``.

    Args:
        logits: ``[b, v]``.
        k: Tokens kept per row (ties with the ``k``-th are kept too).
    """
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [b, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filter: drop the least likely tokens whose cumulative mass stays ``<= 1 - p``.

    Args:
        logits: ``[b, v]``.
        p: Mass to keep.
        min_keep: Tokens kept whatever their mass.
    """
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending, [b, v]
    tail_mass = sorted_logits.softmax(-1).cumsum(-1)  # [b, v] mass of this token and all less likely
    drop = tail_mass <= 1 - p
    drop[:, -min_keep:] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def filter_min_p(logits: torch.Tensor, min_p: float, min_keep: int = 1) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the row's largest probability.

    Args:
        logits: ``[b, v]``.
        min_p: Relative threshold.
        min_keep: Most likely tokens kept whatever the threshold.
    """
    probs = logits.softmax(-1)  # [b, v]
    drop = probs < min_p * probs.amax(-1, keepdim=True)
    top = torch.topk(probs, min(min_keep, probs.shape[-1]), dim=-1).indices  # [b, min_keep]
    drop.scatter_(-1, top, False)
    return logits.masked_fill(drop, float("-inf"))


def process_logits(
    logits: torch.Tensor, config: SamplingConfig, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply the repetition penalty, then (when sampling) temperature and the truncation filters.

    Args:
        logits: ``[b, v]`` fp32 next-token logits.
        config: The settings.
        seen: ``[b, v]`` bool, tokens already in each row's prompt or output (for the penalty).

    Returns:
        Processed fp32 logits ``[b, v]`` (``-inf`` where filtered out).
    """
    if config.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(
            logits < 0, logits * config.repetition_penalty, logits / config.repetition_penalty
        )
        logits = torch.where(seen, penalised, logits)
    if config.greedy:
        return logits
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k:
        logits = filter_top_k(logits, config.top_k)
    if config.top_p is not None and config.top_p < 1.0:
        logits = filter_top_p(logits, config.top_p)
    if config.min_p:
        logits = filter_min_p(logits, config.min_p)
    return logits


def select(
    logits: torch.Tensor, config: SamplingConfig | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token per row ``[b]`` from processed logits ``[b, v]`` (argmax, or one draw)."""
    if config is None or config.greedy:
        return logits.argmax(-1)
    probs = logits.softmax(-1)  # [b, v]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
