"""Beam search (Graves 2012; Wu et al. 2016, arXiv:1609.08144, for the length penalty), vectorised.

Every row keeps ``k = num_beams`` running hypotheses and up to ``k`` finished ones. At each step the
``(1 + max(1, #stop ids)) * k`` best continuations over all running beams (by summed log-probability)
are taken, so that ``k`` of them survive even if many just stopped. A continuation that emits a stop id
(or reaches ``max_new_tokens``) is a finished candidate when it ranks among the first ``k``; its score
is the summed log-probability divided by ``generated_length ** length_penalty`` (the stop token
counted), and it replaces the worst finished hypothesis if better. The others continue.

A row is done by ``early_stopping``: ``True`` once ``k`` hypotheses are finished; ``False`` once the best
running beam, normalised by the current length, cannot beat the worst finished one; ``"never"`` the
same, but with a positive ``length_penalty`` the running score is normalised by the maximum length
(the only exact bound then). The loop ends when no row can improve, or every continuation stopped.
These are the semantics of transformers' ``generate`` (so outputs can be compared token for token);
the computation is written here with whole-batch tensor operations, the cache reordered in place.

Shape legend: b rows, k beams, c candidates per row, v vocabulary, n new tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch

from ._decode_step import DecodeStep
from ._decoder import CausalLM
from ._generate import Prompts, prefill
from ._stopping import GenerationStats, peak_memory_bytes, stop_id_tensor, sync

__all__ = ["beam_search"]

_NEG = -1.0e9  # "excluded" score; added, not assigned, so the arithmetic matches the reference


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select beams ``index`` ``[b, j]`` along dim 1 of ``t`` ``[b, k, ...]``."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def beam_search(
    model: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    num_beams: int,
    length_penalty: float = 1.0,
    early_stopping: bool | Literal["never"] = False,
    eos_token_id: int | Sequence[int] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_id: int = 0,
    compile: bool = False,
    stats: GenerationStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best beam per prompt; see :func:`ft_models.generate` for the arguments.

    Returns:
        ``new_ids`` ``[b, n]`` right-padded with ``pad_id`` and ``lengths`` ``[b]``.
    """
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    k, n = num_beams, max_new_tokens
    pre = prefill(model, prompts, max_new_tokens, pad_id=pad_id, stats=stats)
    cache, logits = pre.cache, pre.logits
    device = logits.device
    t0 = time.perf_counter()
    b, v = logits.shape
    if n <= 0:
        return torch.full((b, 0), pad_id, dtype=torch.long, device=device), torch.zeros(
            b, dtype=torch.long, device=device
        )
    cache.reorder(torch.arange(b, device=device).repeat_interleave(k))  # [b * k] rows
    logits = logits.repeat_interleave(k, 0)  # [b * k, v]
    stop_ids = stop_id_tensor(eos_token_id, stop_token_ids, device)
    c = max(2, 1 + stop_ids.numel()) * k
    in_top_k = torch.arange(c, device=device) < k  # [c]
    row_offset = torch.arange(b, device=device)[:, None] * k  # [b, 1]

    run_seq = torch.full((b, k, n), pad_id, dtype=torch.long, device=device)
    run_score = torch.zeros(b, k, device=device)
    run_score[:, 1:] = _NEG  # all beams start equal: only the first may expand at step 0
    fin_seq = torch.full((b, k, n), pad_id, dtype=torch.long, device=device)
    fin_score = torch.full((b, k), _NEG, device=device)
    fin_len = torch.zeros(b, k, dtype=torch.long, device=device)
    fin_done = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    step_fn = DecodeStep(model, compile=compile)
    always = torch.ones(b * k, dtype=torch.bool, device=device)

    for step in range(n):
        length = step + 1  # generated tokens, this one included
        logp = torch.log_softmax(logits.float(), -1).view(b, k, v) + run_score[:, :, None]
        cand_score, cand_idx = torch.topk(logp.view(b, k * v), c)  # [b, c]
        cand_beam, cand_tok = cand_idx // v, cand_idx % v  # [b, c]
        cand_seq = _gather(run_seq, cand_beam)  # [b, c, n]
        cand_seq[:, :, step] = cand_tok
        stops = torch.isin(cand_tok, stop_ids) | (length >= n)  # [b, c]

        # Running beams: the best k candidates that did not stop.
        alive_score = cand_score + stops.float() * _NEG
        keep = torch.topk(alive_score, k).indices  # [b, k]
        run_seq, run_score = _gather(cand_seq, keep), _gather(alive_score, keep)
        src_beam = _gather(cand_beam, keep)  # [b, k]

        # Finished hypotheses: merge the stopped top-k candidates into the best k so far.
        new_fin = stops & in_top_k[None]
        norm = cand_score / (length**length_penalty)
        rows_full = fin_done.all(-1, keepdim=True) & (early_stopping is True)
        norm = norm + rows_full.float() * _NEG
        norm = norm + (~improvable).float() * _NEG
        norm = norm + (~new_fin).float() * _NEG
        best = torch.topk(torch.cat((fin_score, norm), 1), k).indices  # [b, k]
        fin_seq = _gather(torch.cat((fin_seq, cand_seq), 1), best)
        fin_score = _gather(torch.cat((fin_score, norm), 1), best)
        fin_done = _gather(torch.cat((fin_done, new_fin), 1), best)
        fin_len = _gather(torch.cat((fin_len, torch.full_like(cand_tok, length)), 1), best)

        # Can a running beam still beat the worst finished one?
        bound_len = n if early_stopping == "never" and length_penalty > 0.0 else length
        best_running = run_score[:, :1] / (bound_len**length_penalty)  # [b, 1]
        worst_fin = torch.where(fin_done, fin_score.min(-1, keepdim=True).values, _NEG)  # [b, k]
        improvable = improvable & (best_running > worst_fin).any(-1, keepdim=True)
        all_full = bool(fin_done.all()) and early_stopping is True
        if length >= n or not bool(improvable.any()) or all_full or bool(stops.all()):
            break
        cache.reorder((src_beam + row_offset).reshape(-1))
        logits = step_fn(cache, run_seq[:, :, step].reshape(-1), always)

    lengths = fin_len[:, 0]  # [b]
    out = fin_seq[:, 0, : int(lengths.max())]  # [b, n']
    out = out.masked_fill(torch.arange(out.shape[1], device=device)[None] >= lengths[:, None], pad_id)
    if stats is not None:
        sync(device)
        stats.decode_seconds = time.perf_counter() - t0
        stats.new_tokens = int(lengths.sum())
        stats.peak_memory_bytes = peak_memory_bytes(device)
    return out, lengths
