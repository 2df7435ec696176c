"""The accelerator check: one LoRA step, one QLoRA step and decoding, ft beside transformers (+ PEFT).

Usage: python bench/gpu.py [--device cuda] [--shape llama3.2-1b] [--steps 5] [--dtype bf16]

Meant for a machine with a GPU, in one environment that has ft's packages, transformers, PEFT and
bitsandbytes (the peers need no torchtune here). Each measurement is its own subprocess on the same
random-init checkpoint of the shape: train-lora and train-qlora (batch 4 x 256, ``bench_train.py`` for
ft, ``peer_train.py hf`` for transformers + PEFT, bitsandbytes NF4 for QLoRA), then greedy decoding
at batch 1 and 8 (``bench_model.py decode``: ft eager, ft with its compiled step, transformers'
``generate``). It prints the JSON lines and ``RATIO`` lines and is sized to finish in under 5 minutes
on one GPU (Llama-3.2-1B shape, 5 training steps, 128 new tokens). ``--device cpu --shape smollm2-135m``
runs the same script on a CPU (slowly) to check it before a GPU session.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import SHAPES, make_checkpoint  # noqa: E402
from bench_train import _default_ckpt  # noqa: E402
from run import _ratio, _run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", default="llama3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = ap.parse_args()
    start = time.perf_counter()
    ckpt = make_checkpoint(args.shape, _default_ckpt(args.shape))
    where = ["--device", args.device]
    steps = ["--steps", str(args.steps)]
    for method in ("lora", "qlora"):
        shape = ["--shape", args.shape, "--ckpt", str(ckpt)]
        ft = _run([str(HERE / "bench_train.py"), "ft", method, args.dtype, *shape, *where, *steps])
        hf = _run(
            [str(HERE / "peer_train.py"), "hf", method, args.dtype, "--ckpt", str(ckpt), *where, *steps]
        )
        _ratio(f"train-{method} {args.shape} {args.dtype} {args.device}", ft, hf, "tokens_per_s")
    for batch in (1, 8):
        common = [args.dtype, str(ckpt), "--batch", str(batch), *where]
        hf = _run([str(HERE / "bench_model.py"), "decode", "hf", *common])
        for extra, label in (([], "eager"), (["--compile"], "compiled")):
            ft = _run([str(HERE / "bench_model.py"), "decode", "ft", *common, *extra])
            name = f"decode b{batch} {args.shape} {args.dtype} {args.device} {label}"
            _ratio(name, ft, hf, "decode_tokens_per_s")
    print(f"gpu.py: {time.perf_counter() - start:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
