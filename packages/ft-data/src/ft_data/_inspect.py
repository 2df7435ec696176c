"""Human view of one example: every token with whether the loss trains on it.

The view is read back from the labels (the shifted targets the loss sees), not from the mask
that produced them, so it shows what training will actually do. A preference pair is shown as its
shared prompt (the tokens before the first trained one) and each answer token by token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ft_data._labels import IGNORE_INDEX
from ft_data._protocol import Tokenizer

__all__ = [
    "PreferenceView",
    "TokenView",
    "format_example",
    "format_preference",
    "inspect_example",
    "inspect_preference",
]


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


@dataclass(frozen=True)
class PreferenceView:
    """One preference pair as training sees it.

    Attributes:
        prompt: The shared prompt's tokens (none trained).
        chosen: The chosen side's tokens after the prompt.
        rejected: The rejected side's tokens after the prompt.
    """

    prompt: list[TokenView]
    chosen: list[TokenView]
    rejected: list[TokenView]


def inspect_preference(example: Mapping[str, Sequence[int]], tokenizer: Tokenizer) -> PreferenceView:
    """Split a pair (``chosen_input_ids``, ``chosen_labels``, ``rejected_*``) into prompt and answers.

    The prompt ends before the chosen side's first trained token; the rejected side must start with the
    same untrained tokens (ft-data builds pairs that way, so a difference means labels from elsewhere).

    Raises:
        ValueError: A side with no trained token, or prompts that differ.
    """
    sides = {
        side: inspect_example(example[f"{side}_input_ids"], example[f"{side}_labels"], tokenizer)
        for side in ("chosen", "rejected")
    }
    starts = {}
    for side, views in sides.items():
        first = next((v.index for v in views if v.trained), None)
        if first is None:
            raise ValueError(f"{side}: no trained token")
        starts[side] = first
    p = starts["chosen"]
    if starts["rejected"] != p or [v.id for v in sides["chosen"][:p]] != [
        v.id for v in sides["rejected"][:p]
    ]:
        raise ValueError("chosen and rejected do not share their prompt tokens")
    return PreferenceView(
        prompt=sides["chosen"][:p], chosen=sides["chosen"][p:], rejected=sides["rejected"][p:]
    )


def format_preference(example: Mapping[str, Sequence[int]], tokenizer: Tokenizer) -> str:
    """The shared prompt as text, then each answer one token per line (position, ``+`` trained or ``.``,
    id, text), so what DPO compares (the trained answer tokens, nothing of the prompt) is visible."""
    view = inspect_preference(example, tokenizer)
    lines = [
        f"prompt: {len(view.prompt)} tokens, shared, not trained",
        repr("".join(v.text for v in view.prompt)),
    ]
    for side, views in (("chosen", view.chosen), ("rejected", view.rejected)):
        trained = sum(v.trained for v in views)
        lines.append(f"{side}: {len(views)} tokens after the prompt, {trained} trained (+)")
        lines += [f"{v.index:>6} {'+' if v.trained else '.'} {v.id:>8} {v.text!r}" for v in views]
    return "\n".join(lines)
