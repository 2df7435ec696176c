"""Decode throughput of torchtune 0.6.1 on the weights ft and transformers read; prints one JSON line.

Runs inside the torchtune peer environment (see ``_peers.py``: torchtune 0.6.1, torchao 0.10.0 and the
same torch build as ft) and imports nothing from ft.

Usage: python bench/peer_decode_torchtune.py {fp32,bf16} CKPT_DIR [--batch B]

Workload (../shared/PERFORMANCE.md, decode): greedy, 64-token prompt, 128 new tokens, no stop token;
decode tokens/s over all rows (whole ``generate`` call, prompt included, as for ft and transformers).
The model is torchtune's ``llama3_2`` builder with the SmolLM2-135M shape (tied embeddings, RoPE scale
factor 1) and a KV cache of prompt + new tokens. Weights come from the transformers checkpoint
``CKPT_DIR`` through torchtune's own ``hf_to_tune`` (it undoes the q/k row permutation of the HF layout,
since torchtune's RoPE rotates interleaved pairs), so the three libraries decode the same model and
``first_ids`` can be compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def _model(ckpt: Path, dtype: torch.dtype, batch: int, max_len: int) -> torch.nn.Module:
    from safetensors.torch import load_file
    from torchtune.models.convert_weights import hf_to_tune
    from torchtune.models.llama3_2 import llama3_2

    cfg = json.loads((ckpt / "config.json").read_text())
    heads, kv_heads, dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    # transformers 5 writes RoPE settings under rope_parameters; older files have rope_theta at the top.
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(
            f"{ckpt}/config.json: rope_type {rope['rope_type']!r} is not the plain RoPE measured"
        )
    rope_base = rope.get("rope_theta", cfg.get("rope_theta"))
    model = llama3_2(
        vocab_size=cfg["vocab_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=kv_heads,
        embed_dim=dim,
        intermediate_dim=cfg["intermediate_size"],
        max_seq_len=cfg["max_position_embeddings"],
        norm_eps=cfg["rms_norm_eps"],
        rope_base=int(rope_base),
        scale_factor=1,
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
    )
    hf_sd: dict[str, torch.Tensor] = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        hf_sd.update(load_file(f))
    sd = hf_to_tune(hf_sd, num_heads=heads, num_kv_heads=kv_heads, dim=dim)
    sd.pop("output.weight", None)  # tied: the output projection is the embedding
    model.load_state_dict(sd, strict=True)
    model = model.to(dtype).eval()
    model.setup_caches(batch_size=batch, dtype=dtype, decoder_max_seq_len=max_len)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dtype", choices=["fp32", "bf16"])
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    from torchtune.generation import generate

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    prompt_len, new = 64, 128
    model = _model(args.ckpt, dtype, args.batch, prompt_len + new)
    torch.manual_seed(0)  # the same prompt as bench_model.py's decode
    prompt = torch.randint(0, model.tok_embeddings.num_embeddings, (args.batch, prompt_len))

    def run() -> torch.Tensor:
        model.reset_caches()
        out, _ = generate(
            model, prompt, max_generated_tokens=new, temperature=1e-5, top_k=1, stop_tokens=None
        )
        return out[:, prompt_len:]

    with torch.inference_mode():
        first = run()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    el = sorted(times)[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "mode": "decode",
                "lib": "torchtune",
                "dtype": args.dtype,
                "batch": args.batch,
                "device": "cpu",
                "torch": torch.__version__,
                "decode_tokens_per_s": round(args.batch * new / el, 1),
                "run_s": round(el, 3),
                "first_ids": first[0, :8].tolist(),
                "peak_rss_gib": round(rss, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
