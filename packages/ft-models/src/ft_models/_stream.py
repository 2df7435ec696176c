"""Streaming generation: yield each step's new ids, and their text once it is decodable.

Byte-level tokenizers split multi-byte characters over several tokens; decoding a prefix that ends
inside a character gives a replacement character (U+FFFD) at its end. :class:`TextBuffer` therefore
holds text back while the decoded output ends with U+FFFD and releases it once the character is
complete, so the concatenated pieces equal the decoded whole and no piece carries a broken character
(a U+FFFD that later tokens do not complete is released at the end).

Shape legend: b rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._decoder import CausalLM
from ._generate import Prompts, token_steps
from ._stopping import Decode

__all__ = ["StreamChunk", "TextBuffer", "generate_stream"]


class TextBuffer:
    """Incremental, character-safe decoding of one sequence.

    Args:
        decode: Token ids -> text.
    """

    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = 0  # characters already released

    def push(self, ids: Sequence[int]) -> str:
        """Add ids; return the newly decodable text ("" while a character is incomplete)."""
        self.ids.extend(ids)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted :], len(text)
        return new

    def flush(self) -> str:
        """Whatever is still held back (at the end of the sequence)."""
        text = self.decode(self.ids)
        new, self.emitted = text[self.emitted :], len(text)
        return new


@dataclass
class StreamChunk:
    """One step of a streamed generation.

    Attributes:
        ids: Each row's new ids (empty once the row stopped, and in the final flush chunk).
        text: Each row's newly decodable text ("" without ``decode``, or while held back).
    """

    ids: list[list[int]]
    text: list[str]


@torch.inference_mode()
def generate_stream(
    model: CausalLM,
    prompts: Prompts,
    max_new_tokens: int,
    *,
    decode: Decode | None = None,
    **options: Any,
) -> Iterator[StreamChunk]:
    """Like :func:`ft_models.generate` (greedy or sampling), yielding a :class:`StreamChunk` per step.

    Args:
        model: The model.
        prompts: A ``[b, s]`` tensor or a list of 1-D id sequences.
        max_new_tokens: Upper bound on new tokens per row.
        decode: Token ids -> text; enables ``text`` (and stop strings).
        **options: ``generate``'s keyword options except beam search (``eos_token_id``,
            ``stop_token_ids``, ``stop_strings``, ``sampling``, ``generator``, ``pad_id``, ``cache``,
            ``compile``, ``stats``).

    Yields:
        One chunk per step; a last chunk with empty ``ids`` carries text that was held back.
    """
    if options.get("num_beams", 1) > 1:
        raise ValueError(
            "generate_stream: beam search cannot stream (its best beam is known only at the end)"
        )
    options.pop("num_beams", None)
    buffers: list[TextBuffer] | None = None
    for token, active in token_steps(model, prompts, max_new_tokens, decode=decode, sync_every=1, **options):
        ids = [[t] if on else [] for t, on in zip(token.tolist(), active.tolist(), strict=True)]
        if decode is None:
            yield StreamChunk(ids, [""] * len(ids))
            continue
        if buffers is None:
            buffers = [TextBuffer(decode) for _ in ids]
        yield StreamChunk(ids, [buf.push(i) for buf, i in zip(buffers, ids, strict=True)])
    if buffers is not None:
        rest = [buf.flush() for buf in buffers]
        if any(rest):
            yield StreamChunk([[] for _ in rest], rest)
