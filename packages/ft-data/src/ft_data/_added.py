"""Added tokens: whole strings matched in the text before any normalization or BPE.

Matching is leftmost-longest over all candidates (as in Hugging Face ``tokenizers``), with the
``lstrip``/``rstrip`` flags absorbing neighbouring whitespace and ``single_word`` refusing a match
inside a word.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["AddedMatcher", "AddedToken"]


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole string.

    Attributes:
        content: Its text.
        id: Its id.
        special: Control token (BOS, ``<|im_start|>``): matched only when special text is allowed.
        lstrip: Absorb whitespace on its left.
        rstrip: Absorb whitespace on its right.
        single_word: Match only when not inside a word.
        normalized: Matched against normalized text (kept for saving).
    """

    content: str
    id: int
    special: bool
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False


class AddedMatcher:
    """Splits text into (text, None) and (matched, token) spans."""

    def __init__(self, tokens: Sequence[AddedToken]) -> None:
        self._by_content = {t.content: t for t in tokens}
        contents = sorted(self._by_content, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(c) for c in contents)) if contents else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def split(self, text: str) -> Iterator[tuple[str, AddedToken | None]]:
        """Yield spans in order; a plain span's text is yielded with None."""
        if self._pattern is None:
            yield text, None
            return
        pos = 0  # start of the pending plain text
        search = 0
        while True:
            m = self._pattern.search(text, search)
            if m is None:
                break
            tok = self._by_content[m.group()]
            start, end = m.start(), m.end()
            if tok.single_word and (
                (start > 0 and _is_word(text[start - 1])) or (end < len(text) and _is_word(text[end]))
            ):
                search = start + 1
                continue
            if tok.lstrip:
                while start > pos and text[start - 1].isspace():
                    start -= 1
            if tok.rstrip:
                while end < len(text) and text[end].isspace():
                    end += 1
            if start > pos:
                yield text[pos:start], None
            yield text[start:end], tok
            pos = search = end
        if pos < len(text):
            yield text[pos:], None


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"
