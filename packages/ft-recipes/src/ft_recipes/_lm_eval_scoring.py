"""Token-level scoring behind the lm-eval backend: log-probabilities of continuations given contexts.

lm-evaluation-harness asks for ``log p(continuation | context)`` and whether greedy decoding would
produce the continuation. Its own HF backend feeds ``(context + continuation)[:-1]`` once per request
and computes ``[b, s, v]`` log-softmaxes over every position. Multiple-choice tasks send the same
context once per choice, so most of that work is repeated. Here:

1. requests are grouped by their (truncated) context; each distinct context is computed once into a
   KV cache (contexts left-padded, pads marked ``document_ids == -1``);
2. the cache rows are repeated for the group's continuations (``KVCache.reorder``) and every
   continuation but its last token is fed on top in one forward (right-padded, pads again ``-1``);
3. only the hidden states that predict continuation tokens are projected to the vocabulary, in
   chunks, and log-softmaxed in fp32: context positions never reach the output projection.

A batch in which no two rows share a context (single-continuation requests, rolling windows) skips
the cache: one forward over ``context + continuation[:-1]`` per row, left-padded, then step 3. There
the cache would only add a second forward and a copy (measured: 0.9x lm-eval's HF backend with it,
see bench/README.md).

The numbers are those of a full forward (the cache path matches it within fp32 tolerance); the
truncation rule is lm-eval's (at most ``max_length + 1`` tokens, cut from the left of the context).

Shape legend: g distinct contexts in a batch, r continuation rows, c context length, m longest
continuation minus one, T scored tokens, d model width, v vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

import ft_models

__all__ = ["rolling_windows", "score_continuations"]

# Positions projected to the vocabulary at once: bounds the fp32 [T, v] logits (1024 x 128k ~ 0.5 GB).
PROJECTION_CHUNK = 1024


@dataclass
class _Unit:
    """One distinct context and the request indices (at most a batch) continuing it."""

    context: tuple[int, ...]
    rows: list[int]


def _truncate(context: Sequence[int], continuation: Sequence[int], max_length: int | None) -> tuple[int, ...]:
    """The context lm-eval keeps: the model sees ``(context + continuation)[-(max_length + 1):][:-1]``."""
    if max_length is None or len(context) + len(continuation) <= max_length + 1:
        return tuple(context)
    return tuple(context[len(context) + len(continuation) - (max_length + 1) :])


def _units(pairs: Sequence[tuple[tuple[int, ...], Sequence[int]]], batch_size: int) -> list[list[_Unit]]:
    """Batches of units: distinct contexts, longest context + continuation first, at most
    ``batch_size`` continuation rows per batch (a context with more continuations is split)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        groups.setdefault(context, []).append(i)

    def longest(context: tuple[int, ...]) -> int:
        return len(context) + max(len(pairs[i][1]) for i in groups[context])

    units = [
        _Unit(context, rows[k : k + batch_size])
        for context in sorted(groups, key=lambda c: (-longest(c), c))
        for rows in [groups[context]]
        for k in range(0, len(rows), batch_size)
    ]
    batches: list[list[_Unit]] = []
    count = 0
    for unit in units:
        if not batches or count + len(unit.rows) > batch_size:
            batches.append([])
            count = 0
        batches[-1].append(unit)
        count += len(unit.rows)
    return batches


def _score_batch(
    model: ft_models.CausalLM,
    units: list[_Unit],
    continuations: list[Sequence[int]],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs ``[r]`` and all-greedy flags ``[r]`` of one batch (rows in unit order)."""
    r = len(continuations)
    m = max(len(c) for c in continuations) - 1
    targets = torch.full((r, m + 1), -1, dtype=torch.long)  # [r, m + 1]
    for j, cont in enumerate(continuations):
        targets[j, : len(cont)] = torch.tensor(cont)
    if all(len(u.rows) == 1 for u in units):
        steps = _single_forward(model, units, continuations, device)  # [r, m + 1, d]
        return _project(model, steps, targets.to(device))
    ids, docs = ft_models.left_pad([list(u.context) for u in units])  # [g, c]
    unit_of_row = torch.tensor([k for k, u in enumerate(units) for _ in u.rows], device=device)  # [r]
    cache = model.new_cache(len(units), ids.shape[1] + max(m, 1), device=device)
    hidden = model(ids.to(device), document_ids=docs.to(device), cache=cache, return_hidden=True)  # [g, c, d]
    first = hidden[:, -1].index_select(0, unit_of_row)  # [r, d]: predicts each continuation's first token
    steps = first[:, None]  # [r, 1, d]
    if m > 0:
        cache.reorder(unit_of_row)  # one cache row per continuation (rows repeat)
        step_ids = targets[:, :m].clamp(min=0)  # [r, m]: each continuation but its last token
        step_docs = torch.where(targets[:, 1:] >= 0, 0, -1)  # [r, m]: right padding
        more = model(step_ids.to(device), document_ids=step_docs.to(device), cache=cache, return_hidden=True)
        steps = torch.cat([steps, more], 1)  # [r, m + 1, d]
    return _project(model, steps, targets.to(device))


def _single_forward(
    model: ft_models.CausalLM, units: list[_Unit], continuations: list[Sequence[int]], device: torch.device
) -> torch.Tensor:
    """Hidden states ``[r, m + 1, d]`` predicting each continuation token when no two rows share a
    context: one forward over ``context + continuation[:-1]`` per row (left-padded, no cache), as
    lm-eval's HF backend feeds it; a cache would only add a second forward and a copy. Row ``j``'s
    tokens are predicted by its last ``len(continuation)`` positions; shorter rows gather the last
    position again where their targets are padding."""
    seqs = [list(u.context) + list(c[:-1]) for u, c in zip(units, continuations, strict=True)]
    ids, docs = ft_models.left_pad(seqs)  # [r, L]
    hidden = model(ids.to(device), document_ids=docs.to(device), return_hidden=True)  # [r, L, d]
    length, m1 = ids.shape[1], max(len(c) for c in continuations)
    where = torch.full((len(seqs), m1), length - 1, dtype=torch.long)  # [r, m + 1]
    for j, cont in enumerate(continuations):
        where[j, : len(cont)] = torch.arange(length - len(cont), length)
    index = where.to(device)[:, :, None].expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


def _project(
    model: ft_models.CausalLM, steps: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the hidden states ``steps`` ``[r, m + 1, d]`` against ``targets`` ``[r, m + 1]`` (-1:
    padding): only real target positions reach the output projection, in chunks."""
    r = targets.shape[0]
    device = targets.device
    scored = targets >= 0  # [r, m + 1]
    selected = steps[scored]  # [T, d]
    wanted = targets[scored]  # [T]
    row_of_token = torch.arange(r, device=device)[:, None].expand_as(targets)[scored]  # [T]
    token_logp = torch.empty(wanted.shape[0], dtype=torch.float32, device=device)  # [T]
    token_greedy = torch.empty(wanted.shape[0], dtype=torch.bool, device=device)  # [T]
    for start in range(0, wanted.shape[0], PROJECTION_CHUNK):
        part = slice(start, start + PROJECTION_CHUNK)
        logits = model.output_projection(selected[part]).float()  # [chunk, v]
        logp = torch.log_softmax(logits, dim=-1)
        token_logp[part] = logp.gather(1, wanted[part, None]).squeeze(1)
        token_greedy[part] = logits.argmax(-1) == wanted[part]
    sums = torch.zeros(r, dtype=torch.float32, device=device).index_add_(0, row_of_token, token_logp)
    misses = torch.zeros(r, dtype=torch.long, device=device).index_add_(
        0, row_of_token, (~token_greedy).long()
    )
    return sums, misses == 0


@torch.inference_mode()
def score_continuations(
    model: ft_models.CausalLM,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """``(log p(continuation | context), greedy)`` for each ``(context ids, continuation ids)`` pair.

    Args:
        model: An ft ``CausalLM`` (LoRA-wrapped or not), in eval mode.
        pairs: Token ids; both parts non-empty (lm-eval puts BOS/EOS in front of an empty context).
        batch_size: Continuation rows per forward.
        max_length: The model's context: a longer ``context + continuation`` loses context tokens
            from the left, as lm-eval's HF backend does (``None``: no limit).

    Returns:
        Per pair, in order: the summed log-probability of the continuation tokens and whether each of
        them is the argmax at its position.

    Raises:
        ValueError: An empty context or continuation, a continuation longer than ``max_length``, or
            ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prepared: list[tuple[tuple[int, ...], Sequence[int]]] = []
    for n, (context, continuation) in enumerate(pairs):
        if not context or not continuation:
            raise ValueError(f"request {n}: empty context or continuation")
        if max_length is not None and len(continuation) > max_length:
            raise ValueError(
                f"request {n}: continuation of {len(continuation)} tokens > max_length {max_length}"
            )
        prepared.append((_truncate(context, continuation, max_length), list(continuation)))
    device = model.model.embed_tokens.weight.device
    results: list[tuple[float, bool]] = [(0.0, False)] * len(prepared)
    for units in _units(prepared, batch_size):
        rows = [i for u in units for i in u.rows]
        sums, greedy = _score_batch(model, units, [prepared[i][1] for i in rows], device)
        for i, s, g in zip(rows, sums.tolist(), greedy.tolist(), strict=True):
            results[i] = (float(s), bool(g))
    return results


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows over ``tokens`` for ``loglikelihood_rolling``.

    Every token is predicted exactly once: the first window starts from ``prefix_token`` (BOS/EOS) and
    predicts up to ``max_length`` tokens; each later window predicts the next ``max_length`` tokens with
    as much preceding text as fits as its context. Returns ``(context, continuation)`` pairs whose
    summed log-probabilities are the text's log-likelihood (lm-eval's ``get_rolling_token_windows`` with
    ``context_len=1`` and ``make_disjoint_window``).
    """
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = get_rolling_token_windows(
        token_list=list(tokens), prefix_token=prefix_token, max_seq_len=max_length, context_len=1
    )
    return [make_disjoint_window(w) for w in windows]
