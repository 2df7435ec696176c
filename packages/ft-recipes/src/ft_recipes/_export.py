"""The outputs a training run leaves, written without a second copy of the model, and what goes first.

Every writer streams (``ft_models.write_pretrained``): one tensor's CPU copy at a time. A merged export
merges one adapted layer at a time (``ft_peft.merged_state_dict``) and converts each tensor to fp32 a
slice at a time, so neither the merged model nor an fp32 copy ever exists whole; a GGUF base is
converted tensor by tensor. The optimizer is released before export (:func:`release_optimizer`).

A sharded model (several ranks) is written the same way, one parameter at a time: rank 0's writer asks
for each tensor when its turn comes, every rank takes part in gathering it (``full_tensor()``, led by
rank 0 through ``ft_dist.led_by_rank0``), and rank 0 alone writes. So rank 0 holds one gathered tensor
plus the writer's buffer, and the files are the ones a single process with the same weights writes.
"""

from __future__ import annotations

import functools
import gc
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

import ft_dist
import ft_models
import ft_peft

__all__ = ["release_optimizer", "save_adapter", "save_base_hf_dir", "save_hf_dir", "save_merged_hf_dir"]


def _tokenizer_files(tokenizer: Any, tmp: str) -> dict[str, Path]:
    tokenizer.save_pretrained(tmp)
    return {p.name: p for p in Path(tmp).iterdir() if p.is_file()}


def save_hf_dir(model: ft_models.CausalLM, tokenizer: Any, directory: Path) -> Path | None:
    """``model`` as an HF directory with the tokenizer files and chat template, in one atomic write
    (streamed: one tensor's CPU copy at a time; sharded: gathered one parameter at a time, written by
    rank 0). Call on every rank; returns the directory on rank 0, None on the others."""
    if not ft_dist.is_sharded(model):
        with tempfile.TemporaryDirectory() as tmp:
            return ft_models.save_pretrained(model, directory, extra_files=_tokenizer_files(tokenizer, tmp))
    tied = model.config.tie_word_embeddings
    items = [(k, v) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")]
    return _write_gathered(model.config, items, tokenizer, directory, dtype=None)


@dataclass(frozen=True)
class _Gathered:
    """One tensor of a sharded model, gathered on every rank when rank 0's writer reaches it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    def __call__(self) -> torch.Tensor:
        return self.produce()


def _whole(value: Any) -> torch.Tensor:
    """A tensor or deferred tensor as a plain tensor (a DTensor gathered: a collective). A merged layer
    (``ft_peft.MergedWeight``) is computed on its gathered layer, as one process computes it."""
    if isinstance(value, torch.Tensor):
        return value.full_tensor() if isinstance(value, DTensor) else value
    layer = getattr(value, "layer", None)
    if isinstance(layer, torch.nn.Module):
        with ft_dist.gathered(layer):
            return _whole(value())
    return _whole(value())


def _write_gathered(
    config: Any,
    items: Iterable[tuple[str, Any]],
    tokenizer: Any,
    directory: Path,
    *,
    dtype: torch.dtype | None,
) -> Path | None:
    """Write ``(key, tensor or deferred)`` pairs of a sharded model through rank 0's streaming writer,
    each gathered by every rank when the writer asks for it (module docstring)."""
    pairs = list(items)
    tasks: list[Callable[[], torch.Tensor]] = [functools.partial(_whole, v) for _, v in pairs]

    def lead(run: Callable[[int], torch.Tensor]) -> Path:
        entries = [
            (k, _Gathered(tuple(v.shape), v.dtype, functools.partial(run, i)))
            for i, (k, v) in enumerate(pairs)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            return ft_models.write_pretrained(
                config, entries, directory, dtype=dtype, extra_files=_tokenizer_files(tokenizer, tmp)
            )

    return ft_dist.led_by_rank0(tasks, lead)


def save_adapter(model: ft_models.CausalLM, directory: Path, base_model_name_or_path: str) -> Path | None:
    """The model's adapters in PEFT's format (``ft_peft.save_adapter``); call on every rank.

    A sharded model's adapters are gathered by every rank in the same order (they are small: the
    adapter matrices only) and rank 0 alone writes ``directory``. Returns it on rank 0, None elsewhere.
    """
    if not ft_dist.is_sharded(model) or torch.distributed.get_rank() == 0:
        return ft_peft.save_adapter(model, directory, base_model_name_or_path=base_model_name_or_path)
    with tempfile.TemporaryDirectory() as tmp:  # the gathers are collectives: take part, keep nothing
        ft_peft.save_adapter(model, tmp, base_model_name_or_path=base_model_name_or_path)
    return None


def save_merged_hf_dir(model: ft_models.CausalLM, tokenizer: Any, directory: Path) -> Path | None:
    """The model with its adapters merged, as an fp32 HF directory with the tokenizer files, streamed:
    each adapted layer is merged when its shard reaches it and freed before the next, every tensor is
    converted to fp32 a slice at a time, and the model itself is not modified (it keeps its adapters).

    The files are those ``merge_adapters`` + ``model.to(float32)`` + ``save_pretrained`` would write.
    """
    if ft_dist.is_sharded(model):
        return _write_gathered(
            model.config, ft_peft.merged_state_dict(model), tokenizer, directory, dtype=torch.float32
        )
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
