"""The two ranks of tests/test_export_peak_memory.py: a wide model sharded over 2 gloo processes, exported.

``python export_rss_worker.py MODE ROOT`` spawns 2 ranks (``torch.multiprocessing``). Each builds the
same model (about 200 MB in fp32, largest tensor the 20 MB embedding, tied to the output), shards it
with FSDP2, and then every rank exports it: ``MODE`` ``streamed`` is the recipes' own export
(``ft_recipes._export.save_hf_dir``: one parameter gathered at a time, rank 0 writes), ``merged``
the same model with LoRA adapters exported merged (``save_merged_hf_dir``: one adapted layer gathered
and merged at a time), ``whole`` the
wrong variant that gathers the whole state dict first (DCP's ``full_state_dict``) and then writes it.
Rank 0 measures its peak resident memory over the export alone: the peak is reset
(``/proc/self/clear_refs`` <- 5) right before it and read (``VmHWM``) after; growth = peak - resident
at the reset. It writes ``ROOT/result_MODE.json``. Not a test module.

glibc's malloc is told (by the test) to serve every large allocation with its own mapping, returned
on free, so memory freed before the export cannot hide an export's allocations from the peak.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ft_data
import ft_dist
import ft_models
import ft_peft

MIB = 2**20


def build() -> ft_models.CausalLM:
    cfg = ft_models.llama_config(
        "smollm2-135m",
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=5003,  # odd: the two ranks' shards of the embedding differ in size
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = ft_models.build_llama(cfg)
    model.reset_parameters(std=0.02)
    return model


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _export_whole(model: torch.nn.Module, tokenizer: object, directory: Path) -> None:
    """The wrong variant: every tensor gathered to rank 0 at once, then written."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        full.pop("lm_head.weight", None)
        ft_models.write_pretrained(model.config, list(full.items()), directory)  # type: ignore[attr-defined]


def run(rank: int, mode: str, root: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous_{mode}", rank=rank, world_size=2)
    try:
        from ft_recipes.steps import save_hf_dir, save_merged_hf_dir

        tokenizer = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
        model = build()
        if mode == "merged":  # LoRA on the attention and MLP projections, merged as it is written
            ft_peft.apply_lora(model, ["q_proj", "v_proj", "down_proj"], rank=8, alpha=16)
            ft_peft.set_trainable(model)
        sizes = {k: v.numel() * v.element_size() for k, v in model.state_dict().items()}
        ft_dist.shard_model(model, ft_dist.build_mesh(device_type="cpu"))
        directory = Path(root) / f"export_{mode}"
        gc.collect()
        dist.barrier()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
        if mode == "streamed":
            save_hf_dir(model, tokenizer, directory)
        elif mode == "merged":
            save_merged_hf_dir(model, tokenizer, directory)
        else:
            _export_whole(model, tokenizer, directory)
        growth = _status("VmHWM") - before
        dist.barrier()
        if rank == 0:
            written = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
            result = {
                "growth": growth,
                "largest": max(sizes.values()),
                "whole": sum(v for k, v in sizes.items() if k != "lm_head.weight"),
                "written": written,
            }
            (Path(root) / f"result_{mode}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
