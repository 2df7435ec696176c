"""The accelerator check: QLoRA on an 8B shape, masked attention per SDPA backend, the `gpu` tests, and
one LoRA step, one QLoRA step and decoding, ft beside transformers (+ PEFT).

Usage: python bench/gpu.py [--device cuda] [--only qlora8b,attention,tests,train,decode]
                           [--shape llama3.2-1b] [--qlora-shape llama3.1-8b] [--steps 5] [--dtype bf16]

Meant for a machine with a GPU, in one environment that has ft's packages, transformers, PEFT and
bitsandbytes (the peers need no torchtune here). Sections, in this order, each printing JSON lines and
a summary line, with the seconds it took:

- ``qlora8b``: QLoRA (NF4, bf16-mixed, rank 8 on q/v/o + MLP) on a random checkpoint of the Llama-3.1-8B
  shape (written once as sharded bf16 safetensors, ``_shape.py``), loaded and set up by ft's own path
  (``bench_train.py ft``: ``from_pretrained``, ``apply_lora``, the precision policy, AdamW), three
  steps at batch 4 x 256. Reports the peak CUDA memory of training (the allocator's peak reset after
  setup, as the recipes' metrics do) and of setup; the training peak is expected well under 24 GiB.
- ``attention``: ``gpu_attention.py``: packed rows with padding under a block-causal mask, each SDPA
  backend's output and gradients against the fp32 math backend (max abs difference; flash, efficient,
  cuDNN; not-finite values flagged).
- ``tests``: ``pytest -m gpu`` over the repository (ft-peft's CUDA QLoRA parity and memory, the
  precision decisions on this GPU, the CUDA peak-memory reset, ...).
- ``train``: train-lora and train-qlora on ``--shape`` (batch 4 x 256, ``bench_train.py`` for ft,
  ``peer_train.py hf`` for transformers + PEFT, bitsandbytes NF4 for QLoRA), RATIO lines; and the LoRA
  step with the model sharded by FSDP2 over a one-rank process group (``bench_train.py --fsdp``: nccl,
  ``ft_dist.shard_model`` with bf16 parameters and fp32 reductions) beside the single-device step.
- ``decode``: greedy decoding at batch 1 and 8 (``bench_model.py decode``: ft eager, ft with its
  compiled step, transformers' ``generate``).

Sized to finish in about 8 minutes on one H100 (writing the 16 GB 8B checkpoint is about one of them;
it is reused from the temp directory on a second run). ``--device cpu --shape smollm2-135m
--qlora-shape smollm2-135m`` runs the same script on a CPU (slowly; the fused attention backends are
unsupported there) to check it before a GPU session.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import SHAPES, make_checkpoint  # noqa: E402
from bench_train import _default_ckpt  # noqa: E402
from run import _ratio, _run  # noqa: E402

SECTIONS = ("qlora8b", "attention", "tests", "train", "decode")
QLORA_BUDGET_GIB = 24.0


def qlora_big(shape: str, device: str, steps: int) -> None:
    """QLoRA on a large shape through ft's own setup; prints the peak CUDA memory of training."""
    ckpt = make_checkpoint(shape, _default_ckpt(shape))
    cmd = [str(HERE / "bench_train.py"), "ft", "qlora", "bf16", "--shape", shape, "--ckpt", str(ckpt)]
    r = _run([*cmd, "--device", device, "--steps", str(steps)])
    if r is None:
        return
    if "peak_cuda_gib" in r:
        verdict = "within" if r["peak_cuda_gib"] < QLORA_BUDGET_GIB else "OVER"
        print(
            f"QLORA {shape}: training peak {r['peak_cuda_gib']} GiB CUDA ({verdict} {QLORA_BUDGET_GIB:g} GiB), "
            f"setup peak {r['setup_peak_cuda_gib']} GiB, {r['tokens_per_s']} tokens/s at {r['batch']}",
            flush=True,
        )
    else:
        print(f"QLORA {shape} on {device}: peak RSS {r['peak_rss_gib']} GiB (CUDA memory only on a GPU)")


def gpu_tests(timeout: int) -> None:
    """``pytest -m gpu`` over the repository; its summary line is the result."""
    root = HERE.parent
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "packages", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"GPU TESTS: stopped after {timeout} s", flush=True)
        return
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    for line in failed:
        print(line, flush=True)
    print(f"GPU TESTS: {lines[-1] if lines else proc.stderr[-500:]}", flush=True)


def train_and_decode(args: argparse.Namespace, sections: set[str]) -> None:
    ckpt = make_checkpoint(args.shape, _default_ckpt(args.shape))
    where = ["--device", args.device]
    steps = ["--steps", str(args.steps)]
    if "train" in sections:
        for method in ("lora", "qlora"):
            shape = ["--shape", args.shape, "--ckpt", str(ckpt)]
            ft = _run([str(HERE / "bench_train.py"), "ft", method, args.dtype, *shape, *where, *steps])
            hf = _run(
                [str(HERE / "peer_train.py"), "hf", method, args.dtype, "--ckpt", str(ckpt), *where, *steps]
            )
            _ratio(f"train-{method} {args.shape} {args.dtype} {args.device}", ft, hf, "tokens_per_s")
            if method == "lora":  # FSDP2 on one rank: the sharded recipes' path on this device
                ft_cmd = [str(HERE / "bench_train.py"), "ft", method, args.dtype, *shape, *where, *steps]
                fsdp = _run([*ft_cmd, "--fsdp"])
                _ratio(
                    f"train-lora fsdp2 1-rank / single {args.shape} {args.dtype} {args.device}",
                    fsdp,
                    ft,
                    "tokens_per_s",
                )
    if "decode" in sections:
        for batch in (1, 8):
            common = [args.dtype, str(ckpt), "--batch", str(batch), *where]
            hf = _run([str(HERE / "bench_model.py"), "decode", "hf", *common])
            for extra, label in (([], "eager"), (["--compile"], "compiled")):
                ft = _run([str(HERE / "bench_model.py"), "decode", "ft", *common, *extra])
                name = f"decode b{batch} {args.shape} {args.dtype} {args.device} {label}"
                _ratio(name, ft, hf, "decode_tokens_per_s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}"
    )
    ap.add_argument("--shape", default="llama3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--qlora-shape", default="llama3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--tests-timeout", type=int, default=240)
    args = ap.parse_args()
    sections = set(args.only.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    start = time.perf_counter()
    for section in SECTIONS:
        if section not in sections or section == "decode":
            continue
        begun = time.perf_counter()
        if section == "qlora8b":
            qlora_big(args.qlora_shape, args.device, steps=3)
        elif section == "attention":
            _stream([str(HERE / "gpu_attention.py"), "--device", args.device])
        elif section == "tests":
            gpu_tests(args.tests_timeout)
        elif section == "train":
            train_and_decode(args, sections & {"train", "decode"})
        print(f"[{section}] {time.perf_counter() - begun:.0f} s", flush=True)
    if "decode" in sections and "train" not in sections:
        begun = time.perf_counter()
        train_and_decode(args, {"decode"})
        print(f"[decode] {time.perf_counter() - begun:.0f} s", flush=True)
    print(f"gpu.py: {time.perf_counter() - start:.0f} s in all", flush=True)


def _stream(cmd: list[str]) -> None:
    """Run a script whose every stdout line is a result; a failure prints its last stderr lines."""
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        print(line, flush=True)
    if proc.returncode != 0:
        print(f"FAILED: {' '.join(cmd)}\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
