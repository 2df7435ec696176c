"""Packed-row attention: per-document calls against the dense block-causal mask; prints one JSON line.

Usage: python bench/bench_packed.py {segments,dense} [--dtype fp32|bf16] [--layers N] [--rows B]
       [--window W] [--steps K]

A SmolLM2-135M-shaped model (random weights, ``--layers`` of its 30 layers) runs forward + backward on
``--rows`` rows of 4096 tokens packed with documents of 1000, 37, 1500, 700 and 859 tokens. ``segments``
is what the decoder does (each document attended on its own); ``dense`` is the path every packed batch
took before (``AttentionMask.for_sequence(...).prepare(...)`` through ``forward_prepared``: one
``[b, 1, s, s]`` mask for every layer). The kernel setting is ``auto`` (grouped products for bf16
training calls of at most 1024 keys, SDPA otherwise); the loss is ft's chunked projection +
cross-entropy, so the vocabulary-sized logits do not dominate the figures. Reported: the median step time after one warm-up
step; what the first forward keeps for the backward (``saved_mib``: RSS after the forward minus RSS
before it) and the peak RSS the first step adds (``extra_mib``: ``VmHWM`` reset through
``/proc/self/clear_refs``; at this vocabulary the loss's chunks set the peak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ft_models
from ft_models import AttentionMask, positions_from_documents
from ft_recipes.training import linear_cross_entropy

LAYOUT = [1000, 37, 1500, 700, 859]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["segments", "dense"])
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    cfg = ft_models.llama_config("smollm2-135m", num_hidden_layers=a.layers, sliding_window=a.window)
    torch.manual_seed(0)
    model = ft_models.build_llama(cfg)
    model.reset_parameters()
    model.to(dtype).train()
    ft_models.set_attention_kernel(model, "auto")
    row = torch.cat([torch.full((n,), d) for d, n in enumerate(LAYOUT)])
    docs = row.expand(a.rows, -1).contiguous()  # [b, s]
    ids = torch.randint(0, cfg.vocab_size, docs.shape, generator=torch.Generator().manual_seed(1))
    labels = torch.roll(ids, -1, 1)

    saved = []

    def step() -> None:
        if a.mode == "segments":
            hidden = model(ids, document_ids=docs, return_hidden=True)
        else:
            mask = AttentionMask.for_sequence(docs.shape[1], docs, ids.device)
            mask = mask.prepare(model.model.attention_windows())
            rope = model.model.rotary_emb(positions_from_documents(docs))
            hidden = model.model.forward_prepared(ids, rope, mask)
        saved.append(_status("VmRSS:"))
        loss = linear_cross_entropy(hidden, model.output_projection, labels, normalizer=labels.numel())
        loss.backward()
        model.zero_grad(set_to_none=True)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS:")
    times = []
    for _ in range(a.steps + 1):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            extra = _status("VmHWM:") - base
    print(
        json.dumps(
            {
                "mode": a.mode,
                "dtype": a.dtype,
                "layers": a.layers,
                "rows": a.rows,
                "window": a.window,
                "threads": torch.get_num_threads(),
                "step_s": round(statistics.median(times[1:]), 3),
                "saved_mib": round((saved[0] - base) / 2**20),
                "extra_mib": round(extra / 2**20),
            }
        )
    )


if __name__ == "__main__":
    main()
