"""Training-step throughput of a peer library (torchtune 0.6.1, transformers + PEFT, or TRL); one JSON line.

Runs inside the peer's own environment (see ``_peers.py``; TRL: any environment with trl, peft and
datasets, e.g. ft's development one) and imports nothing from ft.

Usage: python bench/peer_train.py {torchtune,hf} {lora,qlora,full} {fp32,bf16} [--steps N] [--ckpt DIR]
       python bench/peer_train.py trl dpo {fp32,bf16} [--steps N] [--gradient-checkpointing]

Workload (../shared/PERFORMANCE.md, train-*): the SmolLM2-135M shape (Llama: 30 layers, d 576, 9 query /
3 KV heads, FFN 1536, vocab 49,152, tied embeddings, RoPE base 100,000), random init, batch 4 x 256,
LoRA rank 8 / alpha 16 / dropout 0 on q, v, o and the three MLP projections, the whole model cast to the
dtype as each peer's own examples do, AdamW (lr 1e-4) over the trainable parameters, one optimizer step per
batch, loss = fp32 cross-entropy over the full ``[b, s, v]`` logits (what both peers' training code does);
median step time after 2 warm-up steps. QLoRA: the frozen base in 4-bit NF4 (torchtune's own NF4; for
transformers, bitsandbytes through ``BitsAndBytesConfig``, compute dtype = the dtype), loading ``--ckpt``
(a transformers checkpoint of the shape; one is written to a temporary directory when not given).

``trl dpo``: TRL's ``DPOTrainer`` (sigmoid loss, beta 0.1) with the same LoRA through ``peft_config`` (the
reference is the model with its adapters disabled, computed every step: TRL's default), on the random pairs
of ``_pairs.py`` (batch of 4 pairs, each side a 256-token row: 128 prompt + 128 answer tokens), the
transformers model of the shape built in the dtype, ``bf16=True`` (autocast) for bf16 and ``bf16=False``
for fp32, AdamW (TRL's default, fused) at lr 1e-4, no LR decay or gradient clipping (as the other side),
``gradient_checkpointing=False`` unless ``--gradient-checkpointing`` (TRL's default is on; ft's recipes
default to off). The step time is the wall time between consecutive ``on_step_end`` callbacks (the whole
trainer step: collation, reference and policy forward, backward, optimizer); tokens/s counts both rows
of each pair.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections.abc import Callable

import torch

B, T, V = 4, 256, 49152
SHAPE = dict(num_layers=30, num_heads=9, num_kv_heads=3, embed_dim=576, intermediate_dim=1536)
LORA_MLP = ["gate_proj", "up_proj", "down_proj"]


def _torchtune(
    method: str, dtype: torch.dtype
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    from torchtune.models.llama3_2 import llama3_2, lora_llama3_2
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    cfg = dict(vocab_size=V, max_seq_len=2048, norm_eps=1e-5, rope_base=100000, scale_factor=1, **SHAPE)
    if method == "full":
        model = llama3_2(**cfg)
    else:
        model = lora_llama3_2(
            lora_attn_modules=["q_proj", "v_proj", "output_proj"],
            apply_lora_to_mlp=True,
            lora_rank=8,
            lora_alpha=16,
            lora_dropout=0.0,
            quantize_base=method == "qlora",
            **cfg,
        )
    model = model.to(dtype)
    if method != "full":
        set_trainable_params(model, get_adapter_params(model))
    return model, lambda x: model(x)


def _hf(
    method: str, dtype: torch.dtype, ckpt: str | None, device: str = "cpu"
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=V, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        if ckpt is None:
            ckpt = tempfile.mkdtemp()
            LlamaForCausalLM(config).save_pretrained(ckpt)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        place = {} if device == "cpu" else {"device_map": device}
        model = LlamaForCausalLM.from_pretrained(
            ckpt, dtype=dtype, quantization_config=quant, attn_implementation="sdpa", **place
        )
    elif ckpt is not None:  # another shape (bench/gpu.py): the checkpoint's own config
        model = LlamaForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation="sdpa")
    else:
        model = LlamaForCausalLM(config).to(dtype)
    if method != "full":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj", *LORA_MLP]
        )
        model = get_peft_model(model, lora)
    return model, lambda x: model(input_ids=x).logits


def _trl_dpo(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    """TRL DPOTrainer + PEFT LoRA on the shared random pairs; the result line (see the module docstring)."""
    import trl
    from _pairs import pair_texts, random_pairs, word_tokenizer
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    config = LlamaConfig(
        vocab_size=V, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, attn_implementation="sdpa", pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(dtype)
    pairs = random_pairs(args.batch * args.steps, V, answer_len=args.seq // 2, prompt_len=args.seq // 2)
    tokenizer = word_tokenizer(V)
    texts = pair_texts(pairs)
    if tokenizer(texts["prompt"][0] + texts["chosen"][0])["input_ids"] != pairs[0][0] + pairs[0][1]:
        raise SystemExit("the word tokenizer does not give back the pair's ids")
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj", *LORA_MLP]
    )
    cfg = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        beta=0.1,
        loss_type=["sigmoid"],
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=args.gradient_checkpointing,
        max_length=args.seq,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        seed=0,
    )
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *a: object, **k: object) -> None:
            ends.append(time.perf_counter())

    trainer = trl.DPOTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_dict(texts),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[StepClock()],
    )
    setup_rss = _peak_rss_gib()
    start = time.perf_counter()
    out = trainer.train()
    times = [b - a for a, b in zip([start, *ends], ends, strict=False)]
    kept = times[2:] or times
    steady = sorted(kept)[len(kept) // 2]
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return {
        "lib": "trl",
        "method": "dpo",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "gradient_checkpointing": args.gradient_checkpointing,
        "tokens_per_s": round(2 * args.batch * args.seq / steady, 1),
        "pairs_per_s": round(args.batch / steady, 3),
        "step_s": round(steady, 4),
        "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in params),
        "loss": round(float(out.training_loss), 4),
        "batch": f"{args.batch} pairs x 2 x {args.seq}",
        "setup_rss_gib": round(setup_rss, 2),
        "peak_rss_gib": round(_peak_rss_gib(), 2),
    }


def _peak_rss_gib() -> float:
    """Peak resident memory: ``VmHWM`` where /proc has it (``ru_maxrss`` also counts the forking
    parent's resident memory across ``exec`` on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("lib", choices=["torchtune", "hf", "trl"])
    ap.add_argument("method", choices=["lora", "qlora", "full", "dpo"])
    ap.add_argument("dtype", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=B, help="rows per step")
    ap.add_argument("--seq", type=int, default=T, help="tokens per row")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--ckpt", default=None, help="transformers checkpoint of the shape (hf qlora)")
    ap.add_argument("--device", default="cpu", help="hf: cpu | cuda")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="trl: TRL's default (off here)")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if (args.lib == "trl") != (args.method == "dpo"):
        ap.error("the dpo workload is TRL's (trl dpo), and TRL runs only it")
    if args.lib == "trl":
        print(json.dumps(_trl_dpo(args, dtype)))
        return
    if args.lib == "torchtune":
        model, fwd = _torchtune(args.method, dtype)
    else:
        model, fwd = _hf(args.method, dtype, args.ckpt, args.device)
    if args.device != "cpu":
        if args.lib != "hf":
            ap.error("--device: only the hf peer runs on another device")
        if args.method != "qlora":  # bitsandbytes placed the quantised model already
            model.to(args.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size if args.lib == "hf" else V
    setup_rss = _peak_rss_gib()
    x = torch.randint(0, vocab, (args.batch, args.seq), device=args.device)
    y = torch.randint(0, vocab, (args.batch, args.seq), device=args.device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        logits = fwd(x)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)  # a host sync, so a CUDA step is complete before the clock stops
        times.append(time.perf_counter() - t)
    kept = times[2:] or times  # a memory-only run may take fewer than 3 steps
    steady = sorted(kept)[len(kept) // 2]
    rss = _peak_rss_gib()
    print(
        json.dumps(
            {
                "lib": args.lib,
                "method": args.method,
                "dtype": args.dtype,
                "torch": torch.__version__,
                "tokens_per_s": round(args.batch * args.seq / steady, 1),
                "step_s": round(steady, 4),
                "threads": torch.get_num_threads(),
                "trainable": sum(p.numel() for p in params),
                "loss": round(float(loss), 4),
                "batch": args.batch,
                "seq": args.seq,
                "setup_rss_gib": round(setup_rss, 2),
                "peak_rss_gib": round(rss, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
