"""Per-sequence stop conditions, the ``Decode`` text protocol and the generation timing report.

A row stops at its first EOS / end-of-turn id (from the caller, ``config.json`` or
``generation_config.json``), at an extra stop id, when its decoded text contains a stop string, or
after ``max_new_tokens``; the token that triggered the stop is returned and counted. Stop ids are
checked on the device; stop strings need text, so they are checked on the host through the caller's
``decode`` (ft-models knows no tokenizer), only over the tail of the text that a new token can
complete.

Shape legend: b rows, n new tokens.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .errors import ConfigError

__all__ = ["Decode", "GenerationStats", "StopStrings", "read_stop_token_ids", "stop_id_tensor"]


class Decode(Protocol):
    """Turns token ids into text (a tokenizer's ``decode``); used for stop strings and streaming.

    Args:
        ids: Token ids of one sequence.

    Returns:
        The text; an incomplete multi-byte character decodes to ``"\\ufffd"`` at the end.
    """

    def __call__(self, ids: Sequence[int], /) -> str: ...


def read_stop_token_ids(directory: str | Path) -> list[int]:
    """EOS / end-of-turn ids declared by a checkpoint directory.

    Reads ``eos_token_id`` (an id or a list) from ``generation_config.json`` and ``config.json``; chat
    models list their end-of-turn id there (e.g. SmolLM2-Instruct's ``<|im_end|>``).

    Args:
        directory: A Hugging Face model directory.

    Returns:
        The union of the ids, in order of appearance.
    """
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(directory) / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text()).get("eos_token_id")
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON ({e})") from None
        for i in [value] if isinstance(value, int) else value or []:
            if int(i) not in ids:
                ids.append(int(i))
    return ids


def stop_id_tensor(
    eos_token_id: int | Sequence[int] | None, stop_token_ids: Sequence[int] | None, device: torch.device
) -> torch.Tensor:
    """All ids that end a row, as a 1-D long tensor on ``device``."""
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
    merged = list(dict.fromkeys([*ids, *(stop_token_ids or [])]))
    return torch.as_tensor(merged, dtype=torch.long, device=device)


class StopStrings:
    """Host-side check of stop strings on each row's decoded output.

    Args:
        strings: The stop strings (non-empty).
        decode: Text of a list of ids.
        batch: Rows.
    """

    def __init__(self, strings: Sequence[str], decode: Decode, batch: int) -> None:
        if any(not s for s in strings):
            raise ValueError("stop_strings: empty strings are not allowed")
        self.strings, self.decode = list(strings), decode
        self.ids: list[list[int]] = [[] for _ in range(batch)]
        self.checked = [0] * batch  # characters of text already searched, per row
        self.longest = max(len(s) for s in strings)

    def update(self, tokens: list[int], active: list[bool]) -> list[bool]:
        """Add one token per row; True for active rows whose text now contains a stop string."""
        hits = []
        for i, (tok, on) in enumerate(zip(tokens, active, strict=True)):
            if not on:
                hits.append(False)
                continue
            self.ids[i].append(tok)
            text = self.decode(self.ids[i])
            start = max(0, self.checked[i] - self.longest + 1)
            hits.append(any(s in text[start:] for s in self.strings))
            self.checked[i] = len(text.rstrip("\ufffd"))
        return hits


@dataclass
class GenerationStats:
    """Timing report of one generation, filled by ``generate(..., stats=...)``.

    Attributes:
        prompt_tokens: Prompt tokens computed (reused cache prefixes excluded), all rows.
        prompt_seconds: Wall time of the prompt forward.
        new_tokens: Tokens generated, all rows (each row's returned length).
        decode_seconds: Wall time from the end of the prompt forward to the last token.
        peak_memory_bytes: Peak accelerator memory allocated (CUDA) or peak process RSS (CPU).
    """

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    new_tokens: int = 0
    decode_seconds: float = 0.0
    peak_memory_bytes: int = 0

    @property
    def prompt_tokens_per_s(self) -> float:
        """Prompt throughput."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode throughput over all rows."""
        return self.new_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def __str__(self) -> str:
        return (
            f"prompt {self.prompt_tokens} tok at {self.prompt_tokens_per_s:.1f} tok/s, "
            f"decode {self.new_tokens} tok at {self.decode_tokens_per_s:.1f} tok/s, "
            f"peak memory {self.peak_memory_bytes / 2**20:.0f} MiB"
        )


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory on ``device``, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
