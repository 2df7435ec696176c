"""Run the side-by-side benchmarks and print ft/peer ratios (`nox -s bench`).

Each measurement runs in its own subprocess (fresh memory, fresh threads); ft and its peer
run in the same invocation, on the same weights and the same torch build, and only their
ratio is meaningful (machines here are shared and noisy).

Usage: python bench/run.py [--only train,decode,llamacpp,lmeval,tokenize,cli,memory,dpo,dist,checkpoint]
       [--shape smollm2-135m]
       [--device cpu] [--dtypes fp32,bf16] [--threads N] [--steps N]

``dpo`` (not in the default set): a LoRA DPO step (4 pairs x 256 tokens each side) of ft beside TRL's
``DPOTrainer`` + PEFT on the same random pairs (``bench_train.py all --methods dpo --peers trl``); prints
tokens/s, peak RSS and the ratio (target ft >= 1.5x TRL's tokens/s, no more memory). ``--threads 1`` is
the steadier setting on a shared machine.

``memory`` (not in the default set: it writes a 2.5 GB checkpoint): the peak resident memory of a QLoRA
training step (NF4 base, batch 2 x 512) on the Llama-3.2-1B shape, ft beside transformers + PEFT +
bitsandbytes, from one random bf16 checkpoint; prints the ratio (target ft <= 0.8x).

``dist`` (not in the default set: several minutes of real ``tune run`` launches): ``train-fsdp``, LoRA and
full fine-tuning of the SmolLM2-135M shape on 2 processes x 1 thread (FSDP2, gloo) against 1 process x 2
threads on the same global batch, and against two independent 1-thread processes (the same compute with
no collective); prints tokens/s, the ratio (target >= 0.8x) and the communication overhead
(``bench_dist.py train``).

``checkpoint`` (not in the default set): full fine-tuning on 2 ranks, the save time and rank 0's peak
memory of the intermediate (sharded DCP) checkpoint and of the final HF export, ft beside torchtune 0.6.1's
``full_finetune_distributed`` on CPU (``bench_dist.py checkpoint``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import make_checkpoint, write_random_checkpoint  # noqa: E402


def _run(cmd: list[str], python: str | Path = sys.executable) -> dict | None:
    env = None if python == sys.executable else dict(os.environ, PYTHONPATH="")  # peers never see ft
    proc = subprocess.run([str(python), *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"FAILED: {' '.join(cmd)}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def _peer(name: str) -> Path | None:
    from _peers import PeerUnavailable, peer_python

    try:
        return peer_python(name)
    except PeerUnavailable as e:
        print(f"SKIP {name}: {e}", flush=True)
        return None


def _ratio(name: str, ft: dict | None, peer: dict | None, key: str) -> None:
    if ft and peer:
        print(
            f"RATIO {name}: ft/{peer['lib']} = {ft[key] / peer[key]:.2f}x "
            f"({ft[key]} vs {peer[key]} {key}, torch {ft['torch']})",
            flush=True,
        )


def qlora_memory(steps: int = 1) -> None:
    """A QLoRA step's peak RSS at batch 2 x 512 on the Llama-3.2-1B shape: ft against transformers + PEFT
    + bitsandbytes (each in its own process, the peer in its own environment), and their ratio."""
    ckpt = write_random_checkpoint("llama3.2-1b", Path(tempfile.gettempdir()) / "ft-bench-llama3.2-1b-bf16")
    rows = ["--batch", "2", "--seq", "512", "--steps", str(steps), "--ckpt", str(ckpt)]
    ft = _run(["bench/bench_train.py", "ft", "qlora", "bf16", "--shape", "llama3.2-1b", *rows])
    hf = _peer("hf")
    peer = _run(["bench/peer_train.py", "hf", "qlora", "bf16", *rows], python=hf) if hf else None
    if ft and peer:
        print(
            f"RATIO qlora-step peak RSS llama3.2-1b b2x512 bf16: ft/hf = "
            f"{ft['peak_rss_gib'] / peer['peak_rss_gib']:.2f}x, target <= 0.8x "
            f"({ft['peak_rss_gib']} vs {peer['peak_rss_gib']} GiB; after setup {ft['setup_rss_gib']} vs "
            f"{peer['setup_rss_gib']} GiB; torch {ft['torch']})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="train,decode,llamacpp,lmeval,tokenize,cli")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument(
        "--threads", type=int, default=None, help="threads for lmeval, llamacpp and dpo (1 on a busy machine)"
    )
    ap.add_argument("--steps", type=int, default=5, help="dpo, dist: steps per measurement (median after 2)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    ckpt = make_checkpoint(args.shape, Path(tempfile.gettempdir()) / f"ft-bench-{args.shape}")
    dev = ["--device", args.device]
    if "train" in only:
        # train-lora / train-qlora / train-full: ft (eager and compiled) beside torchtune and
        # transformers + PEFT in their own environments (bench_train.py builds them on first use).
        subprocess.run(
            [sys.executable, str(HERE / "bench_train.py"), "all", "--dtypes", args.dtypes], check=False
        )
    if "decode" in only:
        torchtune = _peer("torchtune")
        for dtype in args.dtypes.split(","):
            for batch in (1, 8):
                cmd = ["bench/bench_model.py", "decode"]
                rows = ["--batch", str(batch), *dev]
                peers = [_run([*cmd, "hf", dtype, str(ckpt), *rows])]
                if torchtune and args.device == "cpu":
                    tt_cmd = ["bench/peer_decode_torchtune.py", dtype, str(ckpt), "--batch", str(batch)]
                    peers.append(_run(tt_cmd, python=torchtune))
                for extra, label in (([], ""), (["--compile"], " compiled")):
                    ft = _run([*cmd, "ft", dtype, str(ckpt), *rows, *extra])
                    for peer in peers:
                        _ratio(
                            f"decode b{batch} {args.shape} {dtype}{label}", ft, peer, "decode_tokens_per_s"
                        )
    if "llamacpp" in only:
        # Decode at batch 1 on the real SmolLM2-135M: ft (bf16, eager and compiled) beside llama.cpp on
        # ft's F16 export of the same weights and on the 4-bit original; SKIP without a cached build.
        threads = ["--threads", str(args.threads)] if args.threads else []
        subprocess.run([sys.executable, str(HERE / "bench_llama_cpp.py"), *threads], check=False)
    if "lmeval" in only:
        # lm-eval loglikelihood requests/s: ft's backend beside lm-eval's HF backend on the real
        # SmolLM2-135M, in one process with alternating rounds; multiple-choice requests whose 4 endings
        # share a context, and again with every request on its own context. Prints its RATIO lines.
        threads = ["--threads", str(args.threads)] if args.threads else []
        for dtype in args.dtypes.split(","):
            for extra in ([], ["--distinct"]):
                cmd = [
                    sys.executable,
                    str(HERE / "bench_lmeval.py"),
                    "--dtype",
                    dtype,
                    *dev,
                    *threads,
                    *extra,
                ]
                subprocess.run(cmd, check=False)
    if "tokenize" in only and (HERE / "bench_tokenize.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_tokenize.py")], check=False)
    if "cli" in only:
        _run(["bench/bench_cli.py"])
    if "memory" in only:
        qlora_memory()
    if "dist" in only:
        cmd = [sys.executable, str(HERE / "bench_dist.py"), "train", "--steps", str(args.steps)]
        subprocess.run(cmd, check=False)
    if "checkpoint" in only:
        subprocess.run([sys.executable, str(HERE / "bench_dist.py"), "checkpoint"], check=False)
    if "dpo" in only:
        cmd = [sys.executable, str(HERE / "bench_train.py"), "all", "--methods", "dpo", "--peers", "trl"]
        cmd += ["--dtypes", args.dtypes, "--compile", "off", "--steps", str(args.steps)]
        subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else []), check=False)


if __name__ == "__main__":
    main()
