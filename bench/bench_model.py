"""Training-step and decode throughput of one library on one shape; prints one JSON line.

Usage: python bench/bench_model.py {train,decode} {ft,hf} {fp32,bf16} CKPT_DIR [--batch B] [--device D]

train: forward + backward + AdamW step, batch 4 x 256, loss = fp32 cross-entropy over full logits
       (the same loss code for both libraries, so the figure compares the model code);
       median of the steps after 2 warm-up steps.
decode: greedy, 64-token prompt, 128 new tokens, no stop token; decode tokens/s over all rows (median
        of 3 runs after a first one, which for --compile includes compilation: ``first_run_s``).
        Also the bandwidth limit of decoding: every step streams every weight once, so
        tokens/s <= batch * read bandwidth / weight bytes. The bandwidth is measured in the same
        process, with the same threads: ``torch.sum`` over a 1 GiB fp32 tensor (a streaming read),
        best of 5. ``bw_fraction`` = measured tokens/s / that limit (weights only; the KV cache,
        ~2% of the bytes at batch 1 and ~15% at batch 8 on this shape, is left out).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def _load(lib: str, ckpt: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    if lib == "ft":
        import ft_models

        return ft_models.from_pretrained(ckpt, dtype=dtype, device=device)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa").to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_train(lib: str, model: torch.nn.Module, device: str, batch: int, seq: int, steps: int) -> dict:
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (batch, seq), device=device)
    y = torch.randint(0, vocab, (batch, seq), device=device)
    fwd = (lambda t: model(t)) if lib == "ft" else (lambda t: model(input_ids=t).logits)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        logits = fwd(x)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    steady = sorted(times[2:])[len(times[2:]) // 2]
    return {"tokens_per_s": round(batch * seq / steady, 1), "step_s": round(steady, 4)}


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Streaming read bandwidth in bytes/s: best of ``repeats`` sums of a ``gib`` GiB fp32 tensor."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads: every parameter once (tied ones once), except the
    rows of an untied input embedding, of which a step reads only one per sequence."""
    seen: set[int] = set()
    total = 0
    emb, out = model.model.embed_tokens.weight, model.lm_head.weight  # the same paths in ft and transformers
    for p in model.parameters():
        if p.data_ptr() in seen or (p is emb and emb.data_ptr() != out.data_ptr()):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def bench_decode(
    lib: str,
    model: torch.nn.Module,
    device: str,
    batch: int,
    prompt_len: int,
    new: int,
    compile: bool = False,
) -> dict:
    vocab = model.config.vocab_size
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device)
    if lib == "ft":
        import ft_models

        def run() -> torch.Tensor:
            ids, lengths = ft_models.generate(model, prompt, new, compile=compile)
            assert int(lengths.min()) == new
            return ids
    else:

        def run() -> torch.Tensor:
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            return out[:, prompt_len:]

    with torch.inference_mode():
        t0 = time.perf_counter()
        first = run()
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(3):
            _sync(device)
            t = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - t)
    el = sorted(times)[1]
    tok_s = batch * new / el
    res = {"decode_tokens_per_s": round(tok_s, 1), "run_s": round(el, 3), "first_run_s": round(first_s, 1)}
    if device == "cpu":
        bw = read_bandwidth()
        wbytes = weight_bytes_per_step(model)
        limit = batch * bw / wbytes
        res.update(
            read_bw_gb_s=round(bw / 1e9, 1),
            weight_mb_per_step=round(wbytes / 1e6, 1),
            bw_limit_tokens_per_s=round(limit, 1),
            bw_fraction=round(tok_s / limit, 2),
        )
    return {**res, "first_ids": first[0, :8].tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["train", "decode"])
    ap.add_argument("lib", choices=["ft", "hf"])
    ap.add_argument("dtype", choices=["fp32", "bf16"])
    ap.add_argument("ckpt")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="ft only: torch.compile the decode step")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model = _load(args.lib, args.ckpt, dtype, args.device)
    if args.mode == "train":
        model.train()
        batch = args.batch or 4
        res = bench_train(args.lib, model, args.device, batch, 256, args.steps)
    else:
        model.eval()
        batch = args.batch or 1
        res = bench_decode(args.lib, model, args.device, batch, 64, 128, compile=args.compile)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "mode": args.mode,
                "lib": args.lib + ("+compile" if args.compile else ""),
                "dtype": args.dtype,
                "batch": batch,
                "device": args.device,
                "torch": torch.__version__,
                **res,
                "peak_rss_gib": round(rss, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
