"""The benchmark model shapes (../shared/PERFORMANCE.md): SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B, random init.

Both libraries load the same weights: the model is made once with transformers, saved as
safetensors, and each library reads that directory. :func:`write_random_checkpoint` writes the same
layout without ever holding the model: the state dict's names and shapes come from transformers'
model built on the meta device, and each shard's tensors are drawn and saved in turn (peak memory is one
shard), so a 1B checkpoint costs seconds and under a GiB, as the memory tests need. The 8B shape (the
QLoRA-on-a-24-GB-card check of ``gpu.py``) is always written that way (32 GB in fp32 otherwise).
"""

from __future__ import annotations

from pathlib import Path

SHAPES = {
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "llama3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
    "llama3.1-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    ),
}


# Shapes written shard by shard (too large to build as a transformers model first).
SHARDED = {"llama3.1-8b"}


def make_checkpoint(shape: str, directory: Path) -> Path:
    """Write a random-init HF checkpoint of `shape` to `directory` once and return it."""
    if (directory / "config.json").exists():
        return directory
    if shape in SHARDED:
        return write_random_checkpoint(shape, directory)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    model.save_pretrained(directory)
    return directory


def write_random_checkpoint(
    shape: str, directory: Path, *, dtype: str = "bfloat16", max_shard_size: int = 500 * 2**20
) -> Path:
    """Write a random checkpoint of `shape` as sharded safetensors in `dtype`, once; return `directory`.

    The keys, shapes, config.json and index are transformers' (``LlamaForCausalLM`` built on meta,
    tied weights written once); values are 1 for norms and, for matrices, normal(0, 0.02) draws from
    one block of 2**24 repeated (drawing 1.2 billion fresh values would dominate the time; the values'
    distribution is what quantisation and the numerics see). Shards hold at most `max_shard_size` bytes,
    in state-dict order, as ``save_pretrained`` shards.
    """
    if (directory / "config.json").exists():
        return directory
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], dtype=dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tied = config.tie_word_embeddings
    specs = [
        (k, tuple(t.shape)) for k, t in model.state_dict().items() if not (tied and k == "lm_head.weight")
    ]
    torch_dtype = getattr(torch, dtype)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, dims in specs:
        n = torch.Size(dims).numel() * torch_dtype.itemsize
        if shards[-1] and size + n > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append((key, dims))
        size += n
    tmp = directory.with_name(directory.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    block = (torch.randn(2**24, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch_dtype)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            key: torch.ones(dims, dtype=torch_dtype)
            if "norm" in key
            else block.repeat(-(-torch.Size(dims).numel() // block.numel()))[: torch.Size(dims).numel()].view(
                dims
            )
            for key, dims in shard
        }
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    total = sum(torch.Size(d).numel() for _, d in specs) * torch_dtype.itemsize
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(tmp)
    tmp.rename(directory)
    return directory
