"""Training-step throughput of ft beside torchtune 0.6.1 and transformers + PEFT (train-lora/qlora/full).

Usage:
    python bench/bench_train.py all [--methods lora,qlora,full] [--dtypes bf16,fp32] [--compile both]
        ft and every peer, interleaved, each in its own subprocess; prints one JSON line per measurement,
        then RATIO and MFU lines. Peers run from their own environments (``_peers.py``, built on first
        use); an unavailable peer prints ``SKIP`` and the run goes on.
    python bench/bench_train.py ft {lora,qlora,full,dpo} {fp32,bf16} [--compile] [--precision P] [--profile F]
        one ft measurement (``--profile`` writes a torch.profiler op table of one steady step).
    python bench/bench_train.py all --methods dpo --peers trl
        the ``dpo`` workload: ft's LoRA DPO step beside TRL's ``DPOTrainer`` + PEFT (``peer_train.py trl``,
        run with this interpreter: TRL is in ft's development environment).
    python bench/bench_train.py peak {fp32,bf16}
        the measured matmul peak (2048^3, best of 5) that MFU is reported against.

The ft side is set up by the recipes' own setup (``build_ft``: a config for the full or LoRA recipe
through ``ft_recipes.runner.prepare`` and the recipe's ``setup``, i.e. the one ``setup_training``) from a
random-init transformers checkpoint of the shape: LoRA rank 8, alpha 16, dropout 0 on q/v/o + MLP
(QLoRA: ``lora.quantize: nf4``), the precision policy, ``attention: auto``, AdamW (lr 1e-4); then the batch contract (``position_ids`` and ``document_ids`` as the
collator makes them, moved by ``prepare_batch`` as the recipes' step moves them), and the chunked
``linear_cross_entropy`` with the token normaliser (``batch_loss``); ``--compile``
compiles each decoder layer as the recipes' ``compile: true`` does. Not included (the peers do neither):
gradient clipping and the LR schedule. On CUDA the JSON line has ``peak_cuda_gib``, the allocator's peak
during the steps (reset after setup, as the recipes' metrics do), and ``setup_peak_cuda_gib``. Precision for ``bf16``: ``bf16-mixed`` for LoRA/QLoRA (the
recipes' ``auto`` on a bf16 CPU: frozen base stored bf16, fp32 adapters with bf16 compute copies) and
``bf16-pure`` for full (the peers cast the whole model, optimizer state included, to bf16).

MFU = model FLOPs per token x tokens/s / measured matmul peak, with N = 134.5M matmul parameters (the 30
layers' projections and the tied output projection; embedding lookups do no FLOPs) and causal attention
A = 2 x L x n_h x h_d x (T + 1) forward FLOPs per token (QK^T and PV):
full 6N + 3A; LoRA/QLoRA 4N + 3A + 6 N_adapter (forward and input gradients; frozen weights get no weight
gradient; NF4 dequantisation is not model FLOPs).

``dpo``: the LoRA model above trained with the sigmoid DPO loss (beta 0.1) on the random pairs of
``_pairs.py`` (``--batch`` pairs, each side a ``--seq``-token row, half prompt, half answer), collated by
``ft_data.collate_preference`` as the recipe's loader does; each step computes the reference log-probs with
the adapters disabled (``ft_peft.disable_adapters``, the recipe's ``dpo.reference: live``), then the
policy's (``ft_recipes.training.sequence_logps``) and ``preference_loss``, backward, AdamW. Tokens/s counts
both rows of each pair (2 x pairs x seq per step). No MFU line for it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _shape import SHAPES, make_checkpoint  # noqa: E402

B, T = 4, 256
SHAPE = "smollm2-135m"
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Issue 9's targets: (method, dtype) -> (peer, minimum ft/peer ratio).
GOALS = {
    ("lora", "bf16"): ("torchtune", 1.5),
    ("lora", "fp32"): ("torchtune", 1.1),
    ("full", "bf16"): ("torchtune", 1.3),
    ("full", "fp32"): ("torchtune", 1.1),
    ("qlora", "bf16"): ("hf", 1.3),
    ("dpo", "bf16"): ("trl", 1.5),
    ("dpo", "fp32"): ("trl", 1.5),
}
METHODS = ("lora", "qlora", "full", "dpo")


def flops_per_token(method: str, shape: str = SHAPE) -> tuple[float, str]:
    """Model FLOPs per trained token of the workload, and the formula used."""
    c = SHAPES[shape]
    d, f, v, n_layers = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    h_d = d // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * h_d, c["num_key_value_heads"] * h_d
    per_layer = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d)}
    per_layer |= {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    n = n_layers * sum(i * o for i, o in per_layer.values()) + d * v
    attn = 2 * n_layers * q * (T + 1)
    if method == "full":
        return 6 * n + 3 * attn, f"6N + 3A, N={n / 1e6:.1f}M, A={attn / 1e6:.1f}M"
    n_adapter = n_layers * sum(8 * (i + o) for k, (i, o) in per_layer.items() if k in TARGETS)
    return 4 * n + 3 * attn + 6 * n_adapter, f"4N + 3A + 6Na, N={n / 1e6:.1f}M, A={attn / 1e6:.1f}M"


# ---- ft side --------------------------------------------------------------------------------------------


def build_ft(
    method: str, dtype: str, ckpt: Path, precision: str | None, compile: bool, device: str = "cpu"
) -> tuple[Any, Any, str]:
    """The model and optimizer built by the recipes' own setup; returns (model, optimizer, precision).

    A config for ``full_finetune_single_device`` (``full``) or ``lora_finetune_single_device`` (LoRA,
    QLoRA: ``lora.quantize: nf4``; rank 8, alpha 16, dropout 0 on q/v/o + MLP) is written and run through
    ``tune run``'s own path (``ft_recipes.runner.prepare``, then the recipe's ``setup``: the one
    ``setup_training``): the model built on the meta device in its final form and the checkpoint streamed
    in, ``attention: auto``, ``compile``, AdamW (lr 1e-4). The data it builds (a few rows of text, SmolLM2's
    tokenizer) is not used: the steps below feed their own batches.
    """
    import ft_models
    from ft_recipes import full_finetune_single_device, lora_finetune_single_device
    from ft_recipes.runner import prepare

    if precision is None:
        precision = "fp32" if dtype == "fp32" else ("bf16-pure" if method == "full" else "bf16-mixed")
    root = Path(tempfile.mkdtemp(prefix="ft-bench-setup-"))
    data = root / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} " * 40}) + "\n" for i in range(2 * B)))
    tokenizer = ft_models.smollm2_gguf_path()
    text = (
        f"model: {{_component_: from_pretrained, path: {ckpt}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {tokenizer}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, kind: text, use_cache: false}}\n"
        f"output_dir: {root / 'out'}\noptimizer: {{name: adamw, lr: 0.0001}}\nlr_schedule: {{kind: constant}}\n"
        f"device: {device}\nprecision: {precision}\nbatch_size: {B}\nmax_seq_len: {T}\npacked: false\n"
        f"shuffle: false\nepochs: 1\nseed: 0\nattention: auto\ncompile: {str(compile).lower()}\n"
    )
    recipe: Any = full_finetune_single_device
    if method != "full":
        recipe = lora_finetune_single_device
        quantize = "nf4" if method == "qlora" else "null"
        text += (
            f"lora: {{target_modules: [{', '.join(TARGETS)}], rank: 8, alpha: 16, quantize: {quantize}}}\n"
        )
    config = root / "bench.yaml"
    config.write_text(text)
    run = recipe.setup(prepare(recipe, str(config), []).config)
    return run.model.train(), run.optimizer, precision


def peak_rss_gib() -> float:
    """This process's peak resident memory: ``VmHWM`` where /proc has it (``ru_maxrss`` also counts the
    forking parent's resident memory across ``exec`` on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _dpo_step(model: Any, optimizer: Any, pairs: int, seq: int, dev: torch.device) -> Any:
    """One LoRA DPO step as the ``lora_dpo_single_device`` recipe runs it (module docstring, ``dpo``)."""
    from _pairs import PAD_ID, random_pairs

    import ft_peft
    from ft_data import collate_preference
    from ft_recipes.training import PreferenceLoss, preference_loss, sequence_logps

    examples = []
    for prompt, chosen, rejected in random_pairs(pairs, model.config.vocab_size, prompt_len=seq // 2,
                                                 answer_len=seq - seq // 2):  # fmt: skip
        row: dict[str, list[int]] = {}
        for side, answer in (("chosen", chosen), ("rejected", rejected)):
            row[f"{side}_input_ids"] = prompt + answer
            # labels arrive shifted: position t is trained on token t + 1 where that token is the answer's
            row[f"{side}_labels"] = [-100] * (len(prompt) - 1) + answer + [-100]
        examples.append(row)
    cpu_batch = collate_preference(examples, pad_id=PAD_ID)
    cpu_batch["pair_index"] = torch.arange(pairs)
    cfg = PreferenceLoss(loss_type=("sigmoid",), beta=0.1)

    def step() -> float:
        batch = {k: v.to(dev, non_blocking=True) for k, v in cpu_batch.items()}
        with torch.no_grad(), ft_peft.disable_adapters(model):
            reference = sequence_logps(model, batch).logps
        loss, _ = preference_loss(cfg, sequence_logps(model, batch), reference, num_pairs=pairs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def run_ft(args: argparse.Namespace) -> dict[str, Any]:
    from ft_recipes.training import batch_loss, prepare_batch

    ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(args.shape, _default_ckpt(args.shape))
    dev = torch.device(args.device)
    model, optimizer, precision = build_ft(
        args.method, args.dtype, ckpt, args.precision, args.compile, args.device
    )
    if args.fsdp:
        optimizer = _shard_one_rank(model, precision, dev)
    setup_rss = peak_rss_gib()
    rows, seq = args.batch, args.seq
    v = model.config.vocab_size
    torch.manual_seed(0)
    cpu_batch = {  # what the collator makes for unpacked full rows, moved as the recipes' step moves it
        "input_ids": torch.randint(0, v, (rows, seq)),
        "labels": torch.randint(0, v, (rows, seq)),
        "position_ids": torch.arange(seq).expand(rows, seq),
        "document_ids": torch.zeros(rows, seq, dtype=torch.long),
    }
    setup_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)  # the reported peak is training's, as the recipes' metrics

    def step() -> float:
        loss = batch_loss(model, prepare_batch(cpu_batch, dev), normalizer=rows * seq)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())  # a host sync: on CUDA the step is complete when it returns

    if args.method == "dpo":  # rows are pairs: each step trains 2 x rows rows of seq tokens
        step = _dpo_step(model, optimizer, rows, seq, dev)
        rows = 2 * rows

    times = []
    loss = 0.0
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=45)
        Path(args.profile).write_text(table)
    steady = statistics.median(times[2:] or times)  # a memory-only run may take fewer than 3 steps
    rss = peak_rss_gib()
    cuda = {}
    if dev.type == "cuda":
        cuda = {
            "peak_cuda_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
            "setup_peak_cuda_gib": round(setup_peak / 2**30, 2),
        }
    return {
        "lib": ("ft+compile" if args.compile else "ft") + ("+fsdp1" if args.fsdp else ""),
        "shape": args.shape,
        "device": args.device,
        "method": args.method,
        "dtype": args.dtype,
        "precision": precision,
        "torch": torch.__version__,
        "tokens_per_s": round(rows * seq / steady, 1),
        "batch": f"{args.batch} pairs x 2 x {seq}" if args.method == "dpo" else f"{rows}x{seq}",
        "step_s": round(steady, 4),
        "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "loss": round(loss, 4),
        "setup_rss_gib": round(setup_rss, 2),
        "peak_rss_gib": round(rss, 2),
        **cuda,
    }


def _shard_one_rank(model: Any, precision: str, dev: torch.device) -> Any:
    """FSDP2 over a one-rank process group (nccl on CUDA, gloo on a CPU), as the distributed recipes
    shard (``ft_dist.shard_model`` with the precision policy's parameter dtype), and the optimizer rebuilt
    over the sharded parameters: the GPU check's one-process FSDP2 step."""
    import tempfile

    import torch.distributed as dist

    import ft_dist
    from ft_recipes.training import build_optimizer, resolve_precision

    store = Path(tempfile.mkdtemp(prefix="ft-fsdp1-")) / "store"
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    mesh = ft_dist.build_mesh(device_type=dev.type)
    policy = resolve_precision(precision, dev.type)
    ft_dist.shard_model(model, mesh, param_dtype=policy.fsdp_param_dtype)
    assert ft_dist.is_sharded(model), "the model was not sharded"
    return build_optimizer(model, "adamw", lr=1e-4)


def run_peak(dtype: str) -> dict[str, Any]:
    n = 2048
    a = torch.randn(n, n, dtype=DTYPES[dtype])
    b = torch.randn(n, n, dtype=DTYPES[dtype])
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return {
        "lib": "matmul",
        "dtype": dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gflops": round(2 * n**3 / best / 1e9, 1),
    }


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _default_ckpt(shape: str = SHAPE) -> Path:
    return Path(tempfile.gettempdir()) / f"ft-bench-{shape}"


# ---- orchestration --------------------------------------------------------------------------------------


def _sub(python: str | Path, cmd: list[str]) -> dict[str, Any] | None:
    env = dict(os.environ, PYTHONPATH="")  # a peer env must not see ft's sources
    proc = subprocess.run([str(python), *cmd], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        print(
            f"FAILED {Path(str(python)).parent.parent.name}: {' '.join(cmd)}: {err[-1] if err else ''}",
            flush=True,
        )
        return None
    print(lines[-1], flush=True)
    return json.loads(lines[-1])


def run_all(args: argparse.Namespace) -> None:
    from _peers import PeerUnavailable, peer_python

    ckpt = make_checkpoint(SHAPE, Path(args.ckpt) if args.ckpt else _default_ckpt())
    peers: dict[str, Path] = {}
    for name in args.peers.split(","):
        if name == "trl":  # TRL is in ft's own development environment
            peers[name] = Path(sys.executable)
            continue
        try:
            peers[name] = peer_python(name)
        except PeerUnavailable as e:
            print(f"SKIP {name}: {e}", flush=True)
    steps = ["--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
    threads = ["--threads", str(args.threads)] if args.threads else []
    peak = {d: _sub(sys.executable, [__file__, "peak", d, *threads]) for d in args.dtypes.split(",")}
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for dtype in args.dtypes.split(","):
        for method in args.methods.split(","):
            results: dict[str, dict[str, Any]] = {}
            for _ in range(args.repeat):
                for c in compiles:
                    cmd = [__file__, "ft", method, dtype, "--ckpt", str(ckpt), *steps]
                    r = _sub(sys.executable, cmd + (["--compile"] if c else []))
                    _keep(results, r)
                for name, python in peers.items():
                    if (name == "trl") != (method == "dpo"):
                        continue  # TRL runs the dpo workload, and only TRL does
                    if name == "torchtune" and method == "qlora" and not args.torchtune_qlora:
                        # torchtune 0.6.1's NF4 needs every dimension divisible by its scaler block;
                        # the 576x192 k/v projections are not (see PERFORMANCE.md).
                        print(
                            "SKIP torchtune qlora: NF4 cannot quantise the 576x192 k/v projections",
                            flush=True,
                        )
                        continue
                    r = _sub(
                        python,
                        [str(HERE / "peer_train.py"), name, method, dtype, "--ckpt", str(ckpt), *steps],
                    )
                    _keep(results, r)
            _report(method, dtype, results, peak.get(dtype))


def _keep(results: dict[str, dict[str, Any]], r: dict[str, Any] | None) -> None:
    # With --repeat, keep each library's best run (the least disturbed by other load on the machine).
    if r is not None and (r["lib"] not in results or r["tokens_per_s"] > results[r["lib"]]["tokens_per_s"]):
        results[r["lib"]] = r


def _report(method: str, dtype: str, results: dict[str, dict[str, Any]], peak: dict[str, Any] | None) -> None:
    fpt, formula = flops_per_token(method)
    for lib, r in results.items():
        if peak and method != "dpo":
            mfu = fpt * r["tokens_per_s"] / (peak["gflops"] * 1e9)
            print(
                f"MFU train-{method} {dtype} {lib}: {mfu:.1%} of {peak['gflops']} GFLOP/s ({formula})",
                flush=True,
            )
    goal = GOALS.get((method, dtype))
    for lib in ("ft", "ft+compile"):
        for peer in ("torchtune", "hf", "trl"):
            if lib in results and peer in results:
                ft, p = results[lib], results[peer]
                ratio = ft["tokens_per_s"] / p["tokens_per_s"]
                target = f", target >= {goal[1]}x" if goal and goal[0] == peer else ""
                print(
                    f"RATIO train-{method} {SHAPE} {dtype}: {lib}/{peer} = {ratio:.2f}x{target} "
                    f"({ft['tokens_per_s']} vs {p['tokens_per_s']} tokens/s; RSS {ft['peak_rss_gib']} vs "
                    f"{p['peak_rss_gib']} GiB; torch {ft['torch']})",
                    flush=True,
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["all", "ft", "peak"])
    ap.add_argument("method", nargs="?", help="lora | qlora | full (peak: the dtype)")
    ap.add_argument("dtype", nargs="?", help="fp32 | bf16")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=B, help="ft: rows per step")
    ap.add_argument("--seq", type=int, default=T, help="ft: tokens per row")
    ap.add_argument("--ckpt", default=None, help="random-init transformers checkpoint (made once if absent)")
    ap.add_argument(
        "--compile", nargs="?", const="on", default=None, help="ft: compile per layer; all: off|on|both"
    )
    ap.add_argument("--precision", default=None, help="ft: override the precision policy")
    ap.add_argument("--device", default="cpu", help="ft: cpu | cuda")
    ap.add_argument("--shape", default=SHAPE, choices=sorted(SHAPES), help="ft: model shape")
    ap.add_argument("--profile", default=None, help="ft: write a profiler table of one step here")
    ap.add_argument("--fsdp", action="store_true", help="ft: shard with FSDP2 over a one-rank group")
    ap.add_argument("--methods", default="lora,qlora,full")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--peers", default="torchtune,hf", help="torchtune, hf; trl (the dpo workload)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads in every measurement (default: torch's)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="all: rounds of ft+peers; the best of each is kept")
    ap.add_argument("--torchtune-qlora", action="store_true", help="all: try torchtune's QLoRA anyway")
    args = ap.parse_args()
    if args.threads and args.mode != "all":
        torch.set_num_threads(args.threads)
    if args.mode == "all":
        args.compile = args.compile or "both"
        run_all(args)
        return
    if args.mode == "peak":
        if args.method not in DTYPES:
            ap.error("peak needs a dtype: fp32 or bf16")
        print(json.dumps(run_peak(args.method)))  # `peak bf16`: the dtype is the first positional
        return
    if args.method not in METHODS or args.dtype not in DTYPES:
        ap.error(f"ft needs a method ({', '.join(METHODS)}) and a dtype (fp32, bf16)")
    args.compile = args.compile == "on"
    print(json.dumps(run_ft(args)))


if __name__ == "__main__":
    main()
