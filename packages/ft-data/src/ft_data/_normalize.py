"""Unicode normalizers applied before pre-tokenization (Unicode Standard Annex #15)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from ft_data.errors import UnsupportedTokenizerError

__all__ = ["Normalizer", "from_hf_json"]

_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}


class Normalizer:
    """A sequence of Unicode normal forms and lowercasing.

    Args:
        steps: Step names in order: ``NFC``, ``NFD``, ``NFKC``, ``NFKD`` or ``Lowercase``.
    """

    def __init__(self, steps: tuple[str, ...] = ()) -> None:
        for step in steps:
            if step not in _FORMS and step != "Lowercase":
                raise UnsupportedTokenizerError(f"normalizer step {step!r} is not supported")
        self.steps = steps
        fns: list[Callable[[str], str]] = []
        for step in steps:
            if step == "Lowercase":
                fns.append(str.lower)
            else:
                fns.append(lambda s, form=step: unicodedata.normalize(form, s))  # type: ignore[misc]
        self._fns = fns

    def __call__(self, text: str) -> str:
        """Normalize `text` (identity when there are no steps)."""
        for fn in self._fns:
            text = fn(text)
        return text

    def to_hf_json(self) -> dict[str, Any] | None:
        """The Hugging Face ``normalizer`` JSON node (None for the identity)."""
        nodes = [{"type": step} for step in self.steps]
        if not nodes:
            return None
        return nodes[0] if len(nodes) == 1 else {"type": "Sequence", "normalizers": nodes}


def from_hf_json(node: dict[str, Any] | None, where: str) -> Normalizer:
    """Map a Hugging Face ``normalizer`` JSON node; unknown types raise, naming the type and file."""
    if node is None:
        return Normalizer()
    nodes = node["normalizers"] if node.get("type") == "Sequence" else [node]
    steps: list[str] = []
    for n in nodes:
        kind = n.get("type")
        if kind not in _FORMS and kind != "Lowercase":
            raise UnsupportedTokenizerError(f"{where}: unsupported normalizer type {kind!r}")
        steps.append(str(kind))
    return Normalizer(tuple(steps))
