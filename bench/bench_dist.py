"""Distributed training on CPU: FSDP2 throughput against one process, and checkpoint saves against torchtune.

Usage:
    python bench/bench_dist.py train [--methods lora,full] [--steps 6] [--precision bf16-mixed] [--setups ...]
        ``train-fsdp``: the same global batch (4 x 256 packed tokens) trained three ways, each a real
        ``tune run`` of the recipe (``lora_finetune_*`` / ``full_finetune_*``) reading its own
        ``metrics.jsonl``:
          ``1p x 2t``   one process, 2 threads, batch 4 (the single-device run);
          ``2p x 1t``   ``tune run --nproc-per-node 2``, 1 thread per rank, batch 2 per rank (FSDP2, gloo);
          ``2 x 1p1t``  two independent one-process runs started together, 1 thread each, batch 2 each:
                        the sharded run's compute on the same cores without any collective.
        Prints tokens/s of each (median step after 2 warm-up steps, from the step times the recipe logs),
        RATIO 2p x 1t / 1p x 2t (target >= 0.8x) and COMM lines: the communication overhead measured two
        ways, (a) the step time of ``2p x 1t`` less that of ``2 x 1p1t`` (what sharding adds: collectives
        and FSDP's copies), and (b) from ``torch.profiler`` on one steady step of the ``2p x 1t`` run, the
        self time of the collectives (``gloo:*`` / ``c10d::*`` events) and of FSDP2's regions
        (``FSDP::*``); (c) the ops whose self time differs most between that step and the same step of
        one of the ``2 x 1p1t`` processes. ``--setups 2p1t,solo`` skips the single-device run.
    python bench/bench_dist.py checkpoint [--steps 2]
        ``checkpoint``: full fine-tuning on 2 ranks (gloo), the save time and rank 0's peak memory of the
        intermediate checkpoint (ft: sharded DCP, each rank writes its shards) and of the final export (ft:
        HF safetensors, gathered one parameter at a time); then torchtune 0.6.1's ``full_finetune_distributed``
        on the same shape, in its own environment (``peer_dist_torchtune.py``): first as shipped, which
        prints ``CANNOT run on CPU: <what it raised>``, then with ``--shim-cpu`` (its two CPU blockers
        replaced; the lines say so), and RATIO lines ft / torchtune.

Every run drives the recipe's own setup and loop: ``tune run`` of ``_dist_recipe.py``, which imports the
recipe and only wraps its savers with timers and one step with the profiler. The model is the
SmolLM2-135M shape (random init, ``_shape.py``) with SmolLM2's tokenizer; the data are random English-like
text rows (every token trained). Nothing here asserts a time: the machine is shared; compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import make_checkpoint  # noqa: E402

SHAPE = "smollm2-135m"
B, T = 4, 256  # the global batch
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RECIPES = {"lora": "lora_finetune_single_device", "full": "full_finetune_single_device"}
_TEXT = (
    "the model reads a batch of tokens and every rank keeps its own shard of each weight while the "
    "gradients are reduced across the group before the optimizer takes one step on the parameters "
    "which then gather again for the next forward pass over new text about rivers cities numbers music"
)
WORDS = _TEXT.split()
COLLECTIVE = ("gloo:", "c10d::", "record_param_comms")


def _tune() -> str:
    return str(Path(sys.executable).parent / "tune")


def inputs(root: Path) -> tuple[Path, Path]:
    """The model directory (SmolLM2-135M shape, random init, SmolLM2's tokenizer) and a text JSONL."""
    import ft_data
    import ft_models

    model = root / "model"
    if not (model / "tokenizer.json").exists():
        make_checkpoint(SHAPE, model)
        ft_data.load_tokenizer(ft_models.smollm2_gguf_path()).save_pretrained(model)
    data = root / "text.jsonl"
    if not data.exists():
        rng = random.Random(0)
        rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(300))} for _ in range(400)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, data


def write_config(root: Path, method: str, precision: str, steps: int) -> Path:
    model, data = inputs(root)
    text = (
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, kind: text, use_cache: false}}\n"
        "output_dir: out\noptimizer: {lr: 0.0001}\nlr_schedule: {kind: constant}\n"
        f"device: cpu\nprecision: {precision}\nbatch_size: {B}\nmax_seq_len: {T}\npacked: true\n"
        f"shuffle: false\nepochs: 1\nmax_steps: {steps}\nseed: 0\ncheckpoint: {{keep_last: 1}}\n"
    )
    if method == "lora":
        text += f"lora: {{target_modules: [{', '.join(TARGETS)}], rank: 8, alpha: 16}}\n"
    path = root / f"{method}-{precision}.yaml"
    path.write_text(text)
    return path


def _launch(
    root: Path,
    method: str,
    config: Path,
    out: str,
    *,
    nproc: int,
    threads: int,
    batch: int,
    profile: int = 0,
    every: int | None = None,
    reshard: bool = True,
) -> subprocess.Popen[str]:
    shutil.rmtree(root / out, ignore_errors=True)
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = [_tune(), "run", *launch, str(HERE / "_dist_recipe.py"), "--config", str(config)]
    cmd += [f"output_dir={out}", f"batch_size={batch}"]
    cmd += [f"checkpoint.every_n_steps={every}", "checkpoint.keep_last=100"] if every else []
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        FT_BENCH_RECIPE=RECIPES[method],
        FT_BENCH_OUT=str(root / out / "bench"),
        FT_BENCH_PROFILE_STEP=str(profile),
        FT_BENCH_RESHARD_AFTER_FORWARD="1" if reshard else "0",
    )
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen[str], what: str) -> bool:
    _, err = proc.communicate()
    if proc.returncode != 0:
        tail = [ln for ln in err.strip().splitlines() if ln.strip()][-5:]
        print(f"FAILED {what}: " + " | ".join(tail), flush=True)
        return False
    return True


def _step_times(root: Path, out: str) -> list[float]:
    """Each optimizer step's wall time, as the recipe measured it (trained tokens / its tokens/s)."""
    rows = [json.loads(line) for line in (root / out / "metrics.jsonl").read_text().splitlines()]
    return [r["trained_tokens"] / r["tokens_per_s"] for r in rows if "tokens_per_s" in r]


def _steady(times: list[float]) -> float:
    return statistics.median(times[2:] or times)


def _records(root: Path, out: str, rank: int = 0) -> list[dict[str, Any]]:
    path = root / out / "bench" / f"rank{rank}.json"
    return json.loads(path.read_text()) if path.exists() else []


def run_train(args: argparse.Namespace) -> None:
    import torch

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    tokens = B * T
    for method in args.methods.split(","):
        config = write_config(root, method, args.precision, args.steps)
        tag = f"{method} {SHAPE} {args.precision} b{B}x{T}"
        if args.reshard_after_forward == "false":
            tag += " reshard_after_forward=False"
        result: dict[str, float] = {}
        setups = args.setups.split(",")
        at = args.steps - 1  # the profiled step
        if "1p2t" in setups:  # 1 process x 2 threads, batch 4: the single-device recipe
            p = _launch(root, method, config, f"{method}-1p2t", nproc=1, threads=2, batch=B)
            if _wait(p, f"{tag} 1p x 2t"):
                result["1p x 2t"] = _steady(_step_times(root, f"{method}-1p2t"))
        profiles: list[dict[str, Any]] = []
        if "2p1t" in setups:  # 2 ranks x 1 thread, batch 2 per rank: FSDP2 over gloo, one step profiled
            reshard = args.reshard_after_forward == "true"
            p = _launch(
                root,
                method,
                config,
                f"{method}-2p1t",
                nproc=2,
                threads=1,
                batch=B // 2,
                profile=at,
                reshard=reshard,
            )
            if _wait(p, f"{tag} 2p x 1t"):
                result["2p x 1t"] = _steady(_step_times(root, f"{method}-2p1t"))
                for rank in (0, 1):
                    profiles += [r for r in _records(root, f"{method}-2p1t", rank) if r["what"] == "profile"]
        solo: list[dict[str, Any]] = []
        if "solo" in setups:  # two independent 1-thread processes of batch 2 at once: no collective
            pair = [
                _launch(
                    root, method, config, f"{method}-solo{i}", nproc=1, threads=1, batch=B // 2, profile=at
                )
                for i in (0, 1)
            ]
            if all([_wait(q, f"{tag} 2 x 1p1t") for q in pair]):
                both = [_steady(_step_times(root, f"{method}-solo{i}")) for i in (0, 1)]
                result["2 x 1p1t"] = max(both)  # the global batch is done when the slower half is
                solo = [r for r in _records(root, f"{method}-solo0") if r["what"] == "profile"]
        for name, step_s in result.items():
            line = {
                "bench": "train-fsdp",
                "method": method,
                "setup": name,
                "precision": args.precision,
                "tokens_per_s": round(tokens / step_s, 1),
                "step_s": round(step_s, 3),
                "torch": torch.__version__,
            }
            print(json.dumps(line), flush=True)
        if "1p x 2t" in result and "2p x 1t" in result:
            ratio = result["1p x 2t"] / result["2p x 1t"]
            print(
                f"RATIO train-fsdp {tag}: 2p x 1t / 1p x 2t = {ratio:.2f}x, target >= 0.8x "
                f"({tokens / result['2p x 1t']:.1f} vs {tokens / result['1p x 2t']:.1f} tokens/s)",
                flush=True,
            )
        if "2p x 1t" in result and "2 x 1p1t" in result:
            extra = result["2p x 1t"] - result["2 x 1p1t"]
            print(
                f"COMM train-fsdp {tag} (a) step time with - without collectives: {extra:.3f} s of "
                f"{result['2p x 1t']:.3f} s = {extra / result['2p x 1t']:.1%} "
                f"(2p x 1t {result['2p x 1t']:.3f} s vs 2 x 1p1t {result['2 x 1p1t']:.3f} s)",
                flush=True,
            )
        for prof in profiles:
            _report_profile(tag, prof, args.top)
        if profiles and solo:
            _compare_profiles(tag, profiles[0], solo[0], args.top)


def _grouped(prof: dict[str, Any]) -> dict[str, float]:
    grouped: dict[str, float] = {}
    for name, seconds in prof["events"].items():
        key = name.split(" (")[0]  # FSDP regions carry the module names: sum them
        grouped[key] = grouped.get(key, 0.0) + seconds
    return grouped


def _compare_profiles(tag: str, sharded: dict[str, Any], alone: dict[str, Any], top: int) -> None:
    """Where the sharded step's extra time goes: per op, rank 0's self time less that of one of the two
    independent processes (the same batch of 2 rows, one thread, no sharding), both profiled steps."""
    a, b = _grouped(sharded), _grouped(alone)
    print(
        f"COMM train-fsdp {tag} (c) profiled step: rank 0 of 2p x 1t {sharded['seconds']:.3f} s vs one of "
        f"2 x 1p1t {alone['seconds']:.3f} s; largest differences in self time (sharded - alone):",
        flush=True,
    )
    diff = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a.keys() | b.keys()}
    for name, seconds in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]:
        print(f"  {seconds:+8.3f} s  {name} ({a.get(name, 0.0):.3f} vs {b.get(name, 0.0):.3f})", flush=True)


def _report_profile(tag: str, prof: dict[str, Any], top: int) -> None:
    """One rank's profiled step: the self time of the collectives (``c10d::*`` / ``gloo:*``, the calls
    into the process group) and of FSDP's own regions (``FSDP::*``: all-gather copy-in, waiting for and
    copying out the gathered parameters, the reduce-scatter's bookkeeping), summed over modules."""
    grouped = _grouped(prof)
    comm = {k: v for k, v in grouped.items() if k.startswith(COLLECTIVE)}
    fsdp = {k: v for k, v in grouped.items() if k.startswith("FSDP::")}
    wall = prof["seconds"]
    c, f = sum(comm.values()), sum(fsdp.values())
    print(
        f"COMM train-fsdp {tag} (b) profiled step {prof['step']} rank {prof.get('rank', '?')}: "
        f"{wall:.3f} s wall; collectives {c:.3f} s self ({c / wall:.1%}), FSDP regions {f:.3f} s self "
        f"({f / wall:.1%}), together {(c + f) / wall:.1%}",
        flush=True,
    )
    for name, seconds in sorted(grouped.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {seconds:8.3f} s  {name}", flush=True)


# ---- checkpoint saves ---------------------------------------------------------------------------------


def run_checkpoint(args: argparse.Namespace) -> None:
    import torch

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root, "full", args.precision, args.steps)
    out = "ckpt-ft"
    # A checkpoint after step 1 (intermediate) and after the last step, then the export.
    p = _launch(root, "full", config, out, nproc=2, threads=1, batch=B // 2, every=1)
    ft_rows = _records(root, out, 0) if _wait(p, "ft checkpoint") else []
    for r in ft_rows:
        if r["what"] == "profile":
            continue
        if r["what"] == "checkpoint":
            kind = "sharded DCP, " + ("intermediate" if r["step"] < args.steps else "last step")
            written = root / out / "checkpoints" / f"step_{r['step']}"
        else:
            kind, written = "HF safetensors, gathered a parameter at a time", root / out / "model"
        line = {
            "bench": "checkpoint",
            "lib": "ft",
            "what": f"{r['what']} ({kind})",
            "precision": args.precision,
            "step": r["step"],
            "world_size": 2,
            "save_s": round(r["seconds"], 2),
            "rank0_rss_before_mib": round(r["rss_before_mib"]),
            "rank0_peak_mib": round(r["peak_mib"]),
            "rank0_peak_over_before_mib": round(r["peak_mib"] - r["rss_before_mib"]),
            "written_mib": round(sum(f.stat().st_size for f in written.rglob("*") if f.is_file()) / 2**20),
            "torch": torch.__version__,
        }
        print(json.dumps(line), flush=True)
    from _peers import PeerUnavailable, peer_python

    try:
        python = peer_python("torchtune")
    except PeerUnavailable as e:
        print(f"SKIP torchtune: {e}", flush=True)
        return
    model, _ = inputs(root)
    dtype = {"fp32": "fp32", "bf16-pure": "bf16"}.get(args.precision)
    if dtype is None:
        print(f"SKIP torchtune: it trains in one dtype (fp32 or bf16), not {args.precision}", flush=True)
        return
    tt_rows: list[dict[str, Any]] = []
    for shim in ([], ["--shim-cpu"]):
        tt_out = root / "ckpt-torchtune"
        shutil.rmtree(tt_out, ignore_errors=True)
        cmd = [str(python), str(HERE / "peer_dist_torchtune.py"), "--model", str(model), "--out", str(tt_out)]
        cmd += ["--steps", str(args.steps), "--batch", str(B // 2), "--seq", str(T), "--dtype", dtype, *shim]
        env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")  # the peer never sees ft
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "CANNOT"))]
        for ln in lines:
            print(ln, flush=True)
        if proc.returncode != 0 and not lines:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
            print("FAILED torchtune checkpoint: " + " | ".join(tail), flush=True)
        tt_rows = [json.loads(ln) for ln in lines if ln.startswith("{")]
        if tt_rows or not any(ln.startswith("CANNOT") for ln in lines):
            break  # ran (as shipped, or with the shim), or failed for another reason
    _ratios(ft_rows, tt_rows)


def _ratios(ft_rows: list[dict[str, Any]], tt_rows: list[dict[str, Any]]) -> None:
    ft: dict[str, dict[str, Any]] = {}
    for r in ft_rows:  # the first checkpoint (intermediate) and the export
        ft.setdefault(r["what"], r)
    for r in tt_rows:
        mine = ft.get("checkpoint" if r.get("intermediate") else "export")
        if mine is None:
            continue
        print(
            f"RATIO checkpoint {'intermediate' if r.get('intermediate') else 'final'} save: ft/{r['lib']} "
            f"time {mine['seconds'] / r['save_s']:.2f}x ({mine['seconds']:.2f} vs {r['save_s']} s), rank-0 "
            f"peak {mine['peak_mib'] / r['rank0_peak_mib']:.2f}x ({mine['peak_mib']:.0f} vs "
            f"{r['rank0_peak_mib']} MiB)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "checkpoint"])
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (train 6, checkpoint 2)")
    ap.add_argument(
        "--precision",
        default=None,
        help="ft's precision (train: bf16-mixed; checkpoint: fp32, torchtune's dtype)",
    )
    ap.add_argument(
        "--reshard-after-forward",
        choices=["true", "false"],
        default="true",
        help="train: false runs 2p x 1t with ft_dist.shard_model(reshard_after_forward=False) (ZeRO-2)",
    )
    ap.add_argument("--setups", default="1p2t,2p1t,solo", help="train: which of the three to run")
    ap.add_argument("--top", type=int, default=8, help="train: profiler events listed per rank")
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "ft-bench-dist"))
    args = ap.parse_args()
    if args.mode == "train":
        args.steps = args.steps or 6
        args.precision = args.precision or "bf16-mixed"
        run_train(args)
    else:
        args.steps = args.steps or 2
        args.precision = args.precision or "fp32"
        run_checkpoint(args)


if __name__ == "__main__":
    main()
