"""Autoregressive generation on a caller-owned KV cache: greedy, sampling, beam search, streaming.

Prompts of different lengths are left-padded into one batch (pads marked ``document_ids == -1``, so
they are masked out and do not shift RoPE positions) and computed in one forward; then each step feeds
one token per row through the static-shape :class:`DecodeStep` (optionally ``torch.compile``-d).
Rows stop independently (EOS / end-of-turn ids, extra stop ids, stop strings, ``max_new_tokens``);
a stopped row keeps running as padding until all rows stop, so no step changes shape. The stop
check syncs with the host only where it must (every step on the CPU, where it is free, every 8 steps
on accelerators, unless stop strings need the text). With a caller-owned cache, a multi-turn chat
keeps the longest common token prefix of the cache and the new prompt and recomputes only the rest.
Beam search lives in :mod:`._beam`, token selection in :mod:`._sampling`, streaming in :mod:`._stream`.

Shape legend: b batch, s prompt length, n new tokens, v vocabulary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ._cache import KVCache
from ._decode_step import DecodeStep
from ._decoder import CausalLM
from ._sampling import SamplingConfig, process_logits, select
from ._stopping import Decode, GenerationStats, StopStrings, peak_memory_bytes, stop_id_tensor, sync
from .errors import CacheError

__all__ = ["Prompts", "generate", "left_pad"]

Prompts = torch.Tensor | Sequence[Sequence[int] | torch.Tensor]


def left_pad(prompts: Prompts, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch prompts, padding on the left.

    Args:
        prompts: A ``[b, s]`` tensor (every token real) or a sequence of 1-D id sequences.
        pad_id: Id written at pad positions (never attended).

    Returns:
        ``input_ids`` ``[b, s]`` and ``document_ids`` ``[b, s]`` (0 real, -1 padding).
    """
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts: expected a [batch, seq] tensor, got shape {tuple(prompts.shape)}")
        return prompts, torch.zeros_like(prompts)
    rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts]
    if not rows or any(r.numel() == 0 for r in rows):
        raise ValueError("prompts: expected at least one non-empty prompt per row")
    s = max(r.numel() for r in rows)
    ids = torch.full((len(rows), s), pad_id, dtype=torch.long)
    docs = torch.full((len(rows), s), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, s - r.numel() :] = r
        docs[i, s - r.numel() :] = 0
    return ids, docs


def _rows(prompts: Prompts) -> list[torch.Tensor]:
    if isinstance(prompts, torch.Tensor):
        left_pad(prompts)  # validates the shape
        return list(prompts.cpu().unbind(0))
    return [torch.as_tensor(p, dtype=torch.long).reshape(-1).cpu() for p in prompts]


def _bucket(n: int) -> int:
    """Next power of two ``>= n`` (cache capacities, so a compiled step sees few shapes)."""
    return 1 << max(n - 1, 1).bit_length()


@dataclass
class _Prefill:
    cache: KVCache
    logits: torch.Tensor  # [b, v] fp32, predicting the first new token
    rows: list[torch.Tensor]  # full prompts, [s_i] each


def prefill(
    model: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    cache: KVCache | None = None,
    pad_id: int = 0,
    stats: GenerationStats | None = None,
) -> _Prefill:
    """Compute the prompts into a cache (a new one, or the caller's after keeping the shared prefix)."""
    device = model.model.embed_tokens.weight.device
    rows = _rows(prompts)
    t0 = time.perf_counter()
    if cache is None:
        s = max(r.numel() for r in rows)
        cache = model.new_cache(len(rows), _bucket(s + max_new_tokens), device=device)
        rest = rows
    else:
        keep = cache.reusable_prefix(rows)
        cache.truncate(keep)
        kept = cache.valid[:, :keep].sum(-1).tolist()
        rest = [r[k:] for r, k in zip(rows, kept, strict=True)]
    ids, docs = left_pad(rest, pad_id)
    ids, docs = ids.to(device), docs.to(device)
    start = cache.length
    cache.reserve(_bucket(start + ids.shape[1] + max_new_tokens))
    # Project only the last position: [b, s, v] prompt logits would be large and unused.
    hidden = model(ids, document_ids=docs, cache=cache, return_hidden=True)  # [b, s, d]
    cache.token_ids[:, start : cache.length] = torch.where(docs >= 0, ids, -1)
    logits = model.output_projection(hidden[:, -1]).float()  # [b, v]
    if stats is not None:
        sync(device)
        stats.prompt_tokens = int((docs >= 0).sum())
        stats.prompt_seconds = time.perf_counter() - t0
    return _Prefill(cache, logits, rows)


def token_steps(
    model: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    decode: Decode | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    pad_id: int = 0,
    cache: KVCache | None = None,
    compile: bool = False,
    sync_every: int | None = None,
    stats: GenerationStats | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(tokens [b], active [b])`` per step: each row's new token, and whether it is real.

    A row's token is real until (and including) the token that stops it; later ones are ``pad_id``.
    See :func:`generate` for the arguments; ``sync_every`` overrides how often the all-stopped check
    reads the device (``1`` for streaming).
    """
    if max_new_tokens <= 0:
        return
    if stop_strings and decode is None:
        raise ValueError("stop_strings need a decode callable (decode=tokenizer.decode)")
    pre = prefill(model, prompts, max_new_tokens, cache=cache, pad_id=pad_id, stats=stats)
    cache, logits = pre.cache, pre.logits
    device = logits.device
    t0 = time.perf_counter()
    b, v = logits.shape
    stop_ids = stop_id_tensor(eos_token_id, stop_token_ids, device)
    strings = StopStrings(stop_strings, decode, b) if stop_strings and decode is not None else None
    seen = None
    if sampling is not None and sampling.repetition_penalty != 1.0:
        seen = torch.zeros(b, v, dtype=torch.bool, device=device)
        for i, r in enumerate(pre.rows):
            seen[i, r.to(device)] = True
    step_fn = DecodeStep(model, compile=compile)
    every = sync_every or (1 if device.type == "cpu" or strings is not None else 8)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        if sampling is not None:
            logits = process_logits(logits, sampling, seen)
        token = select(logits, sampling, generator)  # [b]
        active = ~done
        token = torch.where(active, token, pad_id)
        stopped = torch.isin(token, stop_ids) & active
        if strings is not None:
            hits = strings.update(token.tolist(), active.tolist())
            stopped |= torch.tensor(hits, device=device)
        done = done | stopped
        yield token, active
        if step + 1 == max_new_tokens or ((step + 1) % every == 0 and bool(done.all())):
            break
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        logits = step_fn(cache, token, active)
    if stats is not None:
        sync(device)
        stats.decode_seconds = time.perf_counter() - t0
        stats.peak_memory_bytes = peak_memory_bytes(device)


@torch.inference_mode()
def generate(
    model: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] | None = None,
    decode: Decode | None = None,
    sampling: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | Literal["never"] = False,
    pad_id: int = 0,
    cache: KVCache | None = None,
    compile: bool = False,
    stats: GenerationStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue each prompt.

    Args:
        model: The model (its device is used).
        prompts: A ``[b, s]`` tensor or a list of 1-D id sequences (ragged; left-padded here).
        max_new_tokens: Upper bound on new tokens per row.
        eos_token_id: Id(s) that end a row (EOS, end-of-turn; see :func:`read_stop_token_ids`). The
            stopping token itself is returned and counted.
        stop_token_ids: Further ids that end a row.
        stop_strings: A row ends once its decoded output contains one of them (needs ``decode``).
        decode: Token ids -> text (the tokenizer's ``decode``).
        sampling: Token selection; ``None`` is greedy.
        generator: Random generator for sampling (seed it for reproducible draws).
        num_beams: Beam search when ``> 1`` (greedy scores; best beam returned).
        length_penalty: Beam scores are divided by ``generated_length ** length_penalty``.
        early_stopping: Beam search ends a row once ``num_beams`` hypotheses are finished (``True``),
            when no better one is likely (``False``), or when none is possible (``"never"``).
        pad_id: Fills the returned ids after each row's end.
        cache: A caller-owned cache (``model.new_cache(b, ...)``) reused across calls: the longest
            common token prefix of what it holds and the new prompts is kept, the rest recomputed.
        compile: Run decode steps through ``torch.compile`` (captured once per cache capacity).
        stats: Filled with prompt / decode throughput and peak memory.

    Returns:
        ``new_ids`` ``[b, n]`` right-padded with ``pad_id`` (``n <= max_new_tokens``, the longest row)
        and ``lengths`` ``[b]``, the number of new tokens of each row.
    """
    if num_beams > 1:
        from ._beam import beam_search

        if (sampling is not None and not sampling.greedy) or stop_strings or cache is not None:
            raise ValueError("generate: beam search takes no sampling, stop_strings or cache")
        return beam_search(
            model,
            prompts,
            max_new_tokens,
            num_beams=num_beams,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            eos_token_id=eos_token_id,
            stop_token_ids=stop_token_ids,
            pad_id=pad_id,
            compile=compile,
            stats=stats,
        )
    if cache is not None and cache.batch_size != len(prompts):
        raise CacheError(f"generate: {len(prompts)} prompts for a cache of {cache.batch_size} rows")
    tokens, actives = [], []
    for token, active in token_steps(
        model,
        prompts,
        max_new_tokens,
        eos_token_id=eos_token_id,
        stop_token_ids=stop_token_ids,
        stop_strings=stop_strings,
        decode=decode,
        sampling=sampling,
        generator=generator,
        pad_id=pad_id,
        cache=cache,
        compile=compile,
        stats=stats,
    ):
        tokens.append(token)
        actives.append(active)
    b = len(prompts)
    device = model.model.embed_tokens.weight.device
    if not tokens:
        return torch.full((b, 0), pad_id, dtype=torch.long, device=device), torch.zeros(
            b, dtype=torch.long, device=device
        )
    lengths = torch.stack(actives, 1).sum(1)  # [b]
    out = torch.stack(tokens, 1)  # [b, n]
    out = out[:, : int(lengths.max())]
    if stats is not None:
        stats.new_tokens = int(lengths.sum())
    return out, lengths
