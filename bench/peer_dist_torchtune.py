"""torchtune 0.6.1's ``full_finetune_distributed`` on CPU (gloo, 2 ranks): its checkpoint saves, timed.

Runs inside the torchtune peer environment (``_peers.py``) and imports nothing from ft.

Usage: python bench/peer_dist_torchtune.py --model DIR --out DIR [--steps 2] [--batch 2] [--seq 256]
       [--dtype fp32]

Launches ``torch.distributed.run --nproc-per-node 2`` on this file's worker, which runs torchtune's own
recipe (``recipes/full_finetune_distributed.py`` as shipped in the wheel, its ``recipe_main``) with
``CheckpointClient.save_checkpoint`` wrapped by a timer: a barrier before and after the save, rank 0's
``VmHWM`` reset (``/proc/self/clear_refs`` = 5) just before it and read after it. The shape is the
SmolLM2-135M one through ``llama3_2`` (tied embeddings, RoPE scale factor 1) loaded from ``--model`` (an
HF checkpoint) by ``FullModelHFCheckpointer``; ``epochs: 2`` with ``max_steps_per_epoch`` = steps / 2, so
epoch 1's save is torchtune's intermediate checkpoint (synchronous: model and optimizer state gathered to
rank 0, written as HF safetensors + ``recipe_state.pt``) and epoch 2's its final one (the model only).
Batches are random token rows (the save does not depend on them), through torchtune's
``padded_collate_sft``. Prints one JSON line per save, or ``CANNOT run on CPU: <reason>`` (what the recipe raised).

torchtune 0.6.1's recipe does not run on CPU as shipped, for two reasons: ``_setup_model`` ends with
``training.get_memory_stats(device)`` on rank 0 unconditionally (``log_peak_memory_stats: false`` does not
skip it), which raises ``ValueError: Logging memory stats is not supported on CPU devices``; and
``train`` starts with ``training.cleanup_before_training()``, which calls ``torch.cpu.empty_cache()``
(``AttributeError: module 'torch.cpu' has no attribute 'empty_cache'``). ``--shim-cpu`` replaces those two
functions on CPU (zeros for the stats, ``gc.collect()`` alone for the cleanup), so that the rest of the
recipe (its FSDP2 sharding, loop and checkpointer, unchanged) can be measured; its lines say so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

V = 49152
MODEL = dict(
    vocab_size=V, num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576, max_seq_len=2048,
    intermediate_dim=1536, norm_eps=1e-5, rope_base=100000, scale_factor=1,
)  # fmt: skip


class Tok:
    """The tokenizer the recipe asks for: only ``pad_id`` is used with pre-tokenised rows."""

    pad_id = 0


def rows(tokenizer: Any, n: int = 64, seq: int = 256) -> list[dict[str, list[int]]]:
    """``n`` random rows of ``seq`` tokens, every token trained."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        tokens = [rng.randrange(1, V) for _ in range(seq)]
        out.append({"tokens": tokens, "labels": list(tokens)})
    return out


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(key + ":")).split()[1]) / 1024


def _shim_cpu() -> None:
    """Let the recipe past its two CPU blockers (module docstring), changing nothing else: rank 0's
    ``training.get_memory_stats`` returns zeros on CPU, and ``training.cleanup_before_training`` does its
    ``gc.collect()`` without the device cache calls ``torch.cpu`` lacks."""
    import gc

    import torch
    from torchtune import training

    real_stats, real_cleanup = training.get_memory_stats, training.cleanup_before_training

    def get_memory_stats(device: Any, reset_stats: bool = True) -> dict[str, float]:
        if device.type == "cpu":
            return {"peak_memory_active": 0.0, "peak_memory_alloc": 0.0, "peak_memory_reserved": 0.0}
        return real_stats(device, reset_stats=reset_stats)

    def cleanup_before_training() -> None:
        if torch.cuda.is_available():
            real_cleanup()
        else:
            gc.collect()

    training.get_memory_stats = get_memory_stats
    training.cleanup_before_training = cleanup_before_training


def worker(config: str, out: str, shim: bool) -> None:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <rank pid>` prints where a stalled rank is
    import importlib.util

    import torch.distributed as dist
    from torchtune.training.checkpointing._checkpoint_client import CheckpointClient

    # The wheel's `recipes` directory refuses to be imported as a package: the recipe is loaded by path.
    found = importlib.util.find_spec("recipes")
    assert found is not None
    assert found.submodule_search_locations
    path = Path(found.submodule_search_locations[0]) / "full_finetune_distributed.py"
    spec = importlib.util.spec_from_file_location("full_finetune_distributed", path)
    assert spec is not None
    assert spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    records: list[dict[str, Any]] = []
    save = CheckpointClient.save_checkpoint

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        progress = kwargs["training_progress"]
        epoch = kwargs["epoch"]
        dist.barrier()
        rss = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        start = time.perf_counter()
        save(self, *args, **kwargs)
        dist.barrier()
        records.append(
            {
                "intermediate": epoch + 1 < progress.total_epochs,
                "seconds": time.perf_counter() - start,
                "rss_before_mib": rss,
                "peak_mib": _status_mib("VmHWM"),
            }
        )

    CheckpointClient.save_checkpoint = timed  # type: ignore[method-assign]
    if shim:
        _shim_cpu()
    sys.argv = [sys.argv[0], "--config", config]
    rank = int(os.environ.get("RANK", "0"))
    try:
        recipe.recipe_main()
    except Exception as e:  # the recipe's own failure: the reason it cannot run here
        Path(out, f"bench-error-rank{rank}.txt").write_text(f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    finally:
        if rank == 0:
            Path(out, "bench-rank0.json").write_text(json.dumps(records))


def _config(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ", ".join(f"{k}: {v}" for k, v in MODEL.items())
    text = f"""output_dir: {out}
tokenizer: {{_component_: peer_dist_torchtune.Tok}}
model: {{_component_: torchtune.models.llama3_2.llama3_2, {model}}}
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {args.model}
  checkpoint_files: [model.safetensors]
  recipe_checkpoint: null
  output_dir: {out}
  model_type: LLAMA3_2
resume_from_checkpoint: false
dataset: {{_component_: peer_dist_torchtune.rows, n: {8 * args.batch * args.steps}, seq: {args.seq}}}
seed: 0
shuffle: false
batch_size: {args.batch}
optimizer: {{_component_: torch.optim.AdamW, lr: 0.0001, fused: false}}
loss: {{_component_: torchtune.modules.loss.CEWithChunkedOutputLoss}}
max_steps_per_epoch: {max(1, args.steps // 2)}
epochs: 2
gradient_accumulation_steps: 1
clip_grad_norm: null
compile: false
device: cpu
dtype: {args.dtype}
enable_activation_checkpointing: false
metric_logger: {{_component_: torchtune.training.metric_logging.DiskLogger, log_dir: {out}/logs}}
log_every_n_steps: 1
log_peak_memory_stats: false
"""
    path = out / "config.yaml"
    path.write_text(text)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="rows per rank")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument(
        "--shim-cpu",
        action="store_true",
        help="replace the two functions that stop the recipe on CPU (module docstring)",
    )
    ap.add_argument("--worker", default=None, help="(internal) the config a rank runs")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.out, args.shim_cpu)
        return
    import torch

    config = _config(args)
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, PYTHONPATH=here, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [__file__, "--out", args.out, "--worker", str(config)]
    cmd += ["--shim-cpu"] if args.shim_cpu else []
    log = Path(args.out, "torchrun.log")
    with open(log, "w") as fh:  # the recipe's own log, readable while it runs
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        errors = sorted(Path(args.out).glob("bench-error-rank*.txt"))
        if errors:  # raised inside torchtune's recipe_main
            reason = errors[0].read_text()
            print(f"CANNOT run on CPU: torchtune 0.6.1 full_finetune_distributed: {reason}", flush=True)
        sys.exit(1)
    out = Path(args.out)

    def mib(*dirs: str) -> int:
        return round(sum(f.stat().st_size for d in dirs for f in (out / d).rglob("*") if f.is_file()) / 2**20)

    for r in json.loads(Path(args.out, "bench-rank0.json").read_text()):
        line = {
            "bench": "checkpoint",
            "lib": "torchtune (CPU shim)" if args.shim_cpu else "torchtune",
            "what": "intermediate (model + optimizer gathered to rank 0, HF safetensors + recipe_state.pt)"
            if r["intermediate"]
            else "final (model gathered to rank 0, HF safetensors)",
            "intermediate": r["intermediate"],
            "world_size": 2,
            "dtype": args.dtype,
            "save_s": round(r["seconds"], 2),
            "rank0_rss_before_mib": round(r["rss_before_mib"]),
            "rank0_peak_mib": round(r["peak_mib"]),
            "rank0_peak_over_before_mib": round(r["peak_mib"] - r["rss_before_mib"]),
            "written_mib": mib("epoch_0", "recipe_state") if r["intermediate"] else mib("epoch_1"),
            "torch": torch.__version__,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
