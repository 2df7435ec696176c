"""The benchmark model shapes (../shared/PERFORMANCE.md): SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B, random init.

Both libraries load the same weights: the model is made once with transformers, saved as
safetensors, and each library reads that directory. The 8B shape (the QLoRA-on-a-24-GB-card check of
``gpu.py``) is written tensor by tensor as random bf16 shards with an index, the layout of a Hub
checkpoint, without ever building the model in memory (32 GB in fp32).
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
        return make_sharded_checkpoint(shape, directory)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    model.save_pretrained(directory)
    return directory


def make_sharded_checkpoint(shape: str, directory: Path, shard_bytes: int = 4 * 2**30) -> Path:
    """Random bf16 weights of `shape` as `model-0000i-of-0000n.safetensors` shards plus their index.

    Names and shapes come from a transformers model built on the meta device (no memory); each tensor is
    drawn (std 0.02, norms 1), cast to bf16 and written with its shard, so at most one shard is in memory.
    """
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()  # stored once, as the embedding
    tensors = [(n, tuple(t.shape)) for n, t in model.state_dict().items() if n not in tied]
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in tensors:
        nbytes = 2 * int(torch.Size(dims).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        data = {}
        for name, dims in shard:
            if name.endswith("norm.weight"):
                data[name] = torch.ones(dims, dtype=torch.bfloat16)
            else:
                data[name] = torch.empty(dims).normal_(0.0, 0.02, generator=gen).to(torch.bfloat16)
            weight_map[name] = file
            total += 2 * data[name].numel()
        save_file(data, str(directory / file), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(directory)  # config.json last: its presence marks a complete checkpoint
    return directory
