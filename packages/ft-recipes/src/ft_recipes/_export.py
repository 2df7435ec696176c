"""The outputs a training run leaves, written without a second copy of the model, and what goes first.

Every writer streams (``ft_models.write_pretrained``): one tensor's CPU copy at a time. A merged export
merges one adapted layer at a time (``ft_peft.merged_state_dict``) and converts each tensor to fp32 a
slice at a time, so neither the merged model nor an fp32 copy ever exists whole; a GGUF base is
converted tensor by tensor. The optimizer is released before export (:func:`release_optimizer`).
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any

import torch

import ft_models
import ft_peft

__all__ = ["release_optimizer", "save_base_hf_dir", "save_hf_dir", "save_merged_hf_dir"]


def _tokenizer_files(tokenizer: Any, tmp: str) -> dict[str, Path]:
    tokenizer.save_pretrained(tmp)
    return {p.name: p for p in Path(tmp).iterdir() if p.is_file()}


def save_hf_dir(model: ft_models.CausalLM, tokenizer: Any, directory: Path) -> Path:
    """``model`` as an HF directory with the tokenizer files and chat template, in one atomic write
    (streamed: one tensor's CPU copy at a time)."""
    with tempfile.TemporaryDirectory() as tmp:
        return ft_models.save_pretrained(model, directory, extra_files=_tokenizer_files(tokenizer, tmp))


def save_merged_hf_dir(model: ft_models.CausalLM, tokenizer: Any, directory: Path) -> Path:
    """The model with its adapters merged, as an fp32 HF directory with the tokenizer files, streamed:
    each adapted layer is merged when its shard reaches it and freed before the next, every tensor is
    converted to fp32 a slice at a time, and the model itself is not modified (it keeps its adapters).

    The files are those ``merge_adapters`` + ``model.to(float32)`` + ``save_pretrained`` would write.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return ft_models.write_pretrained(
            model.config,
            ft_peft.merged_state_dict(model),
            directory,
            dtype=torch.float32,
            extra_files=_tokenizer_files(tokenizer, tmp),
        )


def save_base_hf_dir(path: str | Path, tokenizer: Any, directory: Path) -> Path:
    """The checkpoint at ``path`` (a GGUF file) as an HF directory with the tokenizer files, converted
    tensor by tensor (``ft_models.convert_pretrained``), for PEFT and transformers, which read HF
    directories only."""
    with tempfile.TemporaryDirectory() as tmp:
        return ft_models.convert_pretrained(path, directory, extra_files=_tokenizer_files(tokenizer, tmp))


def release_optimizer(run: Any) -> None:
    """Drop the optimizer and everything that refers to it (schedule, checkpoint state) before export:
    AdamW's state is twice the trainable weights in fp32, memory an export can use. ``run`` is the
    recipe's ``Run``; training cannot continue after this."""
    run.optimizer = run.scheduler = run.state = None
    gc.collect()
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
