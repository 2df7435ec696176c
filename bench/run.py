"""Run the side-by-side benchmarks and print ft/peer ratios (`nox -s bench`).

Each measurement runs in its own subprocess (fresh memory, fresh threads); ft and its peer
run in the same invocation, on the same weights and the same torch build, and only their
ratio is meaningful (machines here are shared and noisy).

Usage: python bench/run.py [--only train,decode,tokenize,cli] [--shape smollm2-135m] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import make_checkpoint  # noqa: E402


def _run(cmd: list[str]) -> dict | None:
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"FAILED: {' '.join(cmd)}\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    line = proc.stdout.strip().splitlines()[-1]
    print(line, flush=True)
    return json.loads(line)


def _ratio(name: str, ft: dict | None, peer: dict | None, key: str) -> None:
    if ft and peer:
        print(
            f"RATIO {name}: ft/{peer['lib']} = {ft[key] / peer[key]:.2f}x "
            f"({ft[key]} vs {peer[key]} {key}, torch {ft['torch']})",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="train,decode,tokenize,cli")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args()
    only = set(args.only.split(","))
    ckpt = make_checkpoint(args.shape, Path(tempfile.gettempdir()) / f"ft-bench-{args.shape}")
    dev = ["--device", args.device]
    for dtype in args.dtypes.split(","):
        if "train" in only:
            cmd = ["bench/bench_model.py", "train"]
            ft = _run([*cmd, "ft", dtype, str(ckpt), *dev])
            hf = _run([*cmd, "hf", dtype, str(ckpt), *dev])
            _ratio(f"train-full {args.shape} {dtype}", ft, hf, "tokens_per_s")
        if "decode" in only:
            for batch in (1, 8):
                cmd = ["bench/bench_model.py", "decode"]
                ft = _run([*cmd, "ft", dtype, str(ckpt), "--batch", str(batch), *dev])
                hf = _run([*cmd, "hf", dtype, str(ckpt), "--batch", str(batch), *dev])
                _ratio(f"decode b{batch} {args.shape} {dtype}", ft, hf, "decode_tokens_per_s")
                ftc = _run([*cmd, "ft", dtype, str(ckpt), "--batch", str(batch), "--compile", *dev])
                _ratio(f"decode b{batch} {args.shape} {dtype} compiled", ftc, hf, "decode_tokens_per_s")
    if "tokenize" in only and (HERE / "bench_tokenize.py").exists():
        subprocess.run([sys.executable, str(HERE / "bench_tokenize.py")], check=False)
    if "cli" in only:
        _run(["bench/bench_cli.py"])


if __name__ == "__main__":
    main()
