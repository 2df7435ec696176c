"""Minimal greedy decoding on a caller-owned KV cache.

Prompts of different lengths are left-padded into one batch (pads marked ``document_ids == -1``, so
they are masked out and do not shift RoPE positions); the cache is sized to prompt + new tokens. Each
step feeds one token per row; a row that produced ``eos_token_id`` stops (its later tokens are
discarded). Sampling, stop strings and beam search build on this in ft's generation module.

Shape legend: b batch, s prompt length, n new tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._decoder import CausalLM

__all__ = ["generate", "left_pad"]


def left_pad(
    prompts: torch.Tensor | Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
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


@torch.inference_mode()
def generate(
    model: CausalLM,
    prompts: torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
    max_new_tokens: int,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of each prompt.

    Args:
        model: The model (its device is used).
        prompts: A ``[b, s]`` tensor or a list of 1-D id sequences (ragged; left-padded here).
        max_new_tokens: Upper bound on new tokens per row.
        eos_token_id: Id(s) that end a row; the EOS token itself is returned and counted.
        pad_id: Fills the returned ids after each row's end.

    Returns:
        ``new_ids`` ``[b, n]`` right-padded with ``pad_id`` (``n <= max_new_tokens``) and
        ``lengths`` ``[b]``, the number of new tokens of each row.
    """
    device = model.model.embed_tokens.weight.device
    ids, docs = left_pad(prompts, pad_id)
    ids, docs = ids.to(device), docs.to(device)
    b, s = ids.shape
    eos = torch.as_tensor(
        []
        if eos_token_id is None
        else [eos_token_id]
        if isinstance(eos_token_id, int)
        else list(eos_token_id),
        dtype=torch.long,
        device=device,
    )
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    if max_new_tokens <= 0:
        return out, lengths
    cache = model.new_cache(b, s + max_new_tokens)
    # Project only the last position: [b, s, v] prompt logits would be large and unused.
    hidden = model(ids, document_ids=docs, cache=cache, return_hidden=True)  # [b, s, d]
    logits = model.output_projection(hidden[:, -1])  # [b, v]
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        token = logits.argmax(-1)  # [b]
        out[:, step] = torch.where(done, pad_id, token)
        lengths += (~done).long()
        done |= torch.isin(token, eos)
        if step + 1 == max_new_tokens or bool(done.all()):
            return out[:, : step + 1], lengths
        logits = model(token[:, None], cache=cache)[:, -1]  # [b, v]
    return out, lengths
