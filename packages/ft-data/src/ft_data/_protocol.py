"""The `Tokenizer` capability every ft tokenizer provides, whatever file it was loaded from."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids.

    `encode` returns plain ids: no BOS/EOS unless asked, and text that spells a special token
    (``<|im_start|>``) is encoded as ordinary text unless ``allow_special=True``, so user data can
    never inject control tokens by accident.
    """

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special (control) token text -> id."""
        ...

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id, if the model has one."""
        ...

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id, if the model has one."""
        ...

    @property
    def pad_id(self) -> int | None:
        """Padding id, if the model defines one."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of ids (largest id + 1), special tokens included."""
        ...

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template shipped with the tokenizer, if any."""
        ...

    def encode(
        self, text: str, *, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text`; BOS/EOS only when asked; special-token text matched only when allowed."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens written as their text; invalid UTF-8 replaced by U+FFFD)."""
        ...

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write Hugging Face tokenizer files that `transformers.AutoTokenizer` loads with identical ids."""
        ...
