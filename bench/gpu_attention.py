"""Masked attention on CUDA: each SDPA backend's output and gradients against the math backend.

Usage: python bench/gpu_attention.py [--device cuda] [--seq 2048] [--dtypes bf16,fp16]

Packed rows as ft trains them: several documents per row, block-causal (a token sees earlier tokens of
its own document only), right padding that attends to itself alone (ft's rule for ``document_ids ==
-1``), handed to ``F.scaled_dot_product_attention`` as a dense boolean ``[b, 1, s, s]`` mask. The
reference is the math backend in fp32 (the exact softmax); the math backend in the run's dtype is
reported beside the others, so each backend's error can be read against the rounding that dtype costs
anyway. For flash, efficient and cuDNN attention it prints one JSON line with the largest absolute
difference of the output and of dq / dk / dv, and whether any value is not finite (cuDNN attention has
been reported to give NaN gradients with masks); a backend that refuses the inputs (flash takes no mask)
is reported as unsupported. Loss: a fixed random projection of the output, so every gradient is
non-trivial. Runs in seconds; ``--device cpu`` checks the script (every fused backend is unsupported
there).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def packed_document_ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """``[b, s]`` ids: documents of random lengths packed per row, then 0-15% padding (-1)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        used = seq - int(torch.randint(0, seq * 15 // 100 + 1, (1,), generator=g))
        ids, doc = [], 0
        while len(ids) < used:
            length = int(torch.randint(16, max(17, seq // 3), (1,), generator=g))
            ids += [doc] * min(length, used - len(ids))
            doc += 1
        rows.append(ids + [-1] * (seq - used))
    return torch.tensor(rows)


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` bool: same document and not in the future; a padding token sees only itself."""
    s = document_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=document_ids.device).tril()
    same = document_ids[:, :, None] == document_ids[:, None, :]  # [b, s, s]
    real = (document_ids >= 0)[:, :, None]
    eye = torch.eye(s, dtype=torch.bool, device=document_ids.device)
    return ((same & real & causal) | (~real & eye))[:, None]


def run(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, proj: torch.Tensor
):  # type: ignore[no-untyped-def]
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    with sdpa_kernel([BACKENDS[backend]]):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (out.float() * proj).sum().backward()
    return out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtypes", default="bf16,fp16")
    args = ap.parse_args()
    dev = torch.device(args.device)
    start = time.perf_counter()
    docs = packed_document_ids(args.batch, args.seq).to(dev)
    mask = block_causal_mask(docs)
    g = torch.Generator(device=dev).manual_seed(1)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q32, k32, v32 = (torch.randn(shape, device=dev, generator=g) for _ in range(3))
    proj = torch.randn(shape, device=dev, generator=g)
    gold = run("math", q32, k32, v32, mask, proj)  # fp32 math: the exact reference
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        q, k, v = (t.to(dtype) for t in (q32, k32, v32))
        for backend in BACKENDS:
            record: dict[str, object] = {"bench": "masked-attention", "backend": backend, "dtype": name}
            record.update(device=str(dev), shape=list(shape), torch=torch.__version__)
            try:
                got = run(backend, q, k, v, mask, proj)
            except RuntimeError as e:
                record["unsupported"] = str(e).splitlines()[0][:160]
                print(json.dumps(record), flush=True)
                continue
            for label, a, b in zip(("out", "dq", "dk", "dv"), got, gold, strict=True):
                record[f"max_abs_{label}"] = float((a - b).abs().max())
            record["finite"] = all(bool(torch.isfinite(t).all()) for t in got)
            print(json.dumps(record), flush=True)
    print(f"gpu_attention.py: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
