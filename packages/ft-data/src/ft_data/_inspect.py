"""Human view of one example: every token with whether the loss trains on it.

The view is read back from the labels (the shifted targets the loss sees), not from the mask
that produced them, so it shows what training will actually do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ft_data._labels import IGNORE_INDEX
from ft_data._protocol import Tokenizer

__all__ = ["TokenView", "format_example", "inspect_example"]


@dataclass(frozen=True)
class TokenView:
    """One token of an example.

    Attributes:
        index: Position in the row.
        id: Token id.
        text: Its decoded text.
        trained: Whether it is a target of the loss (predicted from the tokens before it).
    """

    index: int
    id: int
    text: str
    trained: bool


def inspect_example(input_ids: Sequence[int], labels: Sequence[int], tokenizer: Tokenizer) -> list[TokenView]:
    """Every token with its trained flag; token ``t`` is trained when ``labels[t - 1] == input_ids[t]``.

    Args:
        input_ids: Token ids ``[s]``.
        labels: Shifted labels ``[s]`` (-100 where nothing is trained).
        tokenizer: Decodes each token.

    Raises:
        ValueError: Labels that are not a shifted copy of the ids (a label that names another token).
    """
    views = []
    for t, tid in enumerate(input_ids):
        prev = labels[t - 1] if t > 0 else IGNORE_INDEX
        if prev not in (IGNORE_INDEX, tid):
            raise ValueError(f"labels[{t - 1}]={prev} is neither -100 nor input_ids[{t}]={tid}")
        views.append(
            TokenView(index=t, id=int(tid), text=tokenizer.decode([tid]), trained=prev != IGNORE_INDEX)
        )
    return views


def format_example(input_ids: Sequence[int], labels: Sequence[int], tokenizer: Tokenizer) -> str:
    """A table, one token per line: position, trained mark (``+`` trained, ``.`` not), id, text.

    Consecutive runs are easy to scan: the mark column shows exactly which tokens the loss sees.
    """
    views = inspect_example(input_ids, labels, tokenizer)
    trained = sum(v.trained for v in views)
    lines = [f"{len(views)} tokens, {trained} trained (+)"]
    lines += [f"{v.index:>6} {'+' if v.trained else '.'} {v.id:>8} {v.text!r}" for v in views]
    return "\n".join(lines)
