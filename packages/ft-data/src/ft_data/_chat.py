"""Chat -> training ids and loss mask, from the character spans of the rendered template.

The whole conversation is rendered once and that string is tokenised (never message by message,
whose ids differ at turn boundaries). Where each message sits in the rendered text is found by
rendering again with a private-use sentinel put before (or after) that message's content: the
first character where the two renderings differ is where the content starts (ends). This works
for templates that move messages around (Mistral puts the system prompt into the last user turn)
or rewrite them (Qwen3 adds a think block to the last turn), as long as the content itself is
written verbatim (``trim`` is fine).

An assistant turn is trained from where its content (or its tool calls) starts up to and including
the first end-of-turn marker after its content (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``,
EOS...), so the model learns to stop. A token is trained when its characters overlap a trained span.

Ids: the template's own markup is encoded with special tokens matched; message content is encoded
with special-token text as plain text (data cannot inject control tokens), which is transformers'
``apply_chat_template(tokenize=True)`` except for content that spells a special token; pass
``special_in_content="match"`` to match them as transformers does.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ft_data._labels import labels_from_mask
from ft_data._messages import Message
from ft_data._protocol import Tokenizer
from ft_data._template import message_dicts, render, resolve_template, special_token_strings
from ft_data.errors import ChatTemplateError

__all__ = ["END_OF_TURN_MARKERS", "TokenizedChat", "TrainOn", "tokenize_chat"]

TrainOn = Literal["assistant", "last", "all"]
END_OF_TURN_MARKERS: tuple[str, ...] = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|endoftext|>",
    "</s>",
)
"""End-of-turn texts searched after an assistant's content (with the tokenizer's EOS text)."""


@dataclass(frozen=True)
class TokenizedChat:
    """A tokenised conversation.

    Attributes:
        input_ids: Token ids of the rendered text ``[s]``.
        mask: Per token: is it a training target (predicted from the tokens before it) ``[s]``.
        labels: ``input_ids`` shifted left where trained, else -100 (see `labels_from_mask`) ``[s]``.
        text: The rendered template.
        spans: Character spans ``(start, end)`` of the trained regions of `text`.
    """

    input_ids: list[int]
    mask: list[bool]
    labels: list[int]
    text: str
    spans: list[tuple[int, int]]


def _lcp(a: str, b: str) -> int:
    """Length of the longest common prefix (binary search on C-level slice comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Renderer:
    def __init__(
        self, tokenizer: Tokenizer, template: str | None, tools: Any, add_generation_prompt: bool, kwargs: Any
    ) -> None:
        self.name, self.source = resolve_template(template, tokenizer)
        self.tokens = special_token_strings(tokenizer)
        self.tools, self.gen, self.kwargs = tools, add_generation_prompt, kwargs
        self.specials = tuple(tokenizer.special_tokens)

    def with_generation_prompt(self, gen: bool = True) -> _Renderer:
        """The same renderer with ``add_generation_prompt=gen``."""
        other = object.__new__(_Renderer)
        other.__dict__.update(self.__dict__, gen=gen)
        return other

    def __call__(self, dicts: Sequence[Mapping[str, Any]]) -> str:
        return render(
            self.source,
            dicts,
            tokens=self.tokens,
            add_generation_prompt=self.gen,
            tools=self.tools,
            template_kwargs=self.kwargs,
            name=self.name,
        )


def _lcs(a: str, b: str) -> int:
    """Length of the longest common suffix."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _locate(
    text: str, dicts: list[dict[str, Any]], i: int, renderer: _Renderer, sentinel: str
) -> tuple[int, int]:
    """(start, end) of message `i`'s content in `text`, by rendering with a sentinel around it.

    The start is where the rendering with the sentinel before the content departs from `text`
    (common prefix); the end is where the rendering with the sentinel after it rejoins `text`
    (common suffix), so content the template trims is located by what it really writes. A message
    that only calls tools, in a template that does not write its content, starts where the
    generation prompt ends (when the conversation up to it renders as a prefix of `text`), else at
    the last special token before its first function name.
    """
    content = dicts[i].get("content") or ""

    def probe(value: str) -> str:
        return renderer([*dicts[:i], {**dicts[i], "content": value}, *dicts[i + 1 :]])

    before = probe(sentinel + content)
    start = _lcp(text, before)
    mark = before.find(sentinel, start)
    # the sentinel must be where the renderings part (after whitespace the template trimmed)
    if mark < 0 or before[start:mark].strip():
        if not content and dicts[i].get("tool_calls"):
            prompt = _Renderer.with_generation_prompt(renderer)(dicts[:i])
            at = len(prompt) if text.startswith(prompt) else _locate_call(text, dicts, i, renderer, sentinel)
            return at, at
        raise ChatTemplateError(
            f"chat template {renderer.name}: message {i} ({dicts[i]['role']}) content is not written "
            "verbatim, so its tokens cannot be located"
        )
    if not content:
        return start, start
    after = probe(content + sentinel)
    tail = _lcs(text, after)
    end = len(text) - tail
    if after[: len(after) - tail].rstrip()[-1:] != sentinel or end < start:
        raise ChatTemplateError(
            f"chat template {renderer.name}: message {i} ({dicts[i]['role']}) content is not written "
            "verbatim, so its tokens cannot be located"
        )
    return start, end


def _locate_call(text: str, dicts: list[dict[str, Any]], i: int, renderer: _Renderer, sentinel: str) -> int:
    """Start of a tool-call-only message: the last special token (e.g. Mistral's ``[TOOL_CALLS]``)
    between the previous message's content and its first function name (found by putting the
    sentinel into that name), else the end of the previous message's content."""
    calls = [dict(c) for c in dicts[i]["tool_calls"]]
    fn = dict(calls[0].get("function", calls[0]))
    fn["name"] = sentinel + str(fn.get("name", ""))
    calls[0] = {**calls[0], "function": fn} if "function" in calls[0] else fn
    other = renderer([*dicts[:i], {**dicts[i], "tool_calls": calls}, *dicts[i + 1 :]])
    at = _lcp(text, other)
    if other[at : at + 1] != sentinel:
        raise ChatTemplateError(f"chat template {renderer.name}: cannot locate the tool calls of message {i}")
    lower = _locate(text, dicts, i - 1, renderer, sentinel)[1] if i > 0 else 0
    found = [text.rfind(m, lower, at) for m in renderer.specials]
    return max([lower, *found])


def _special_spans(
    text: str, specials: Mapping[str, int], protected: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Spans of special-token text in `text` outside `protected` ranges (leftmost-longest)."""
    if not specials:
        return []
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    return [
        m.span()
        for m in pattern.finditer(text)
        if not any(a < m.end() and m.start() < b for a, b in protected)
    ]


def _encode_with_cuts(
    tokenizer: Tokenizer, text: str, cuts: list[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` (plain) and each token's character range, exact at every cut position.

    The ids are those of the whole text. If encoding the parts between cuts gives the same ids,
    each token lies in its part; otherwise (a token crosses a cut) ranges come from decoding prefixes.
    """
    ids = tokenizer.encode(text)
    if not cuts:
        return ids, [(0, len(text))] * len(ids)
    bounds = [0, *cuts, len(text)]
    parts = [tokenizer.encode(text[a:b]) for a, b in itertools.pairwise(bounds)]
    if [t for p in parts for t in p] == ids:
        return ids, [(a, b) for (a, b), p in zip(itertools.pairwise(bounds), parts) for _ in p]
    decoded = tokenizer.decode(ids)
    shift = len(text) - len(decoded)  # decoders that drop a leading space
    ranges, prev = [], 0
    for k in range(1, len(ids) + 1):
        piece = tokenizer.decode(ids[:k])
        end = len(piece) + shift if decoded.startswith(piece) else prev
        ranges.append((prev, max(end, prev)))
        prev = max(end, prev)
    # a token ending mid-character gets its range from the next complete one
    fixed, nxt = [], len(text)
    for a, b in reversed(ranges):
        fixed.append((a, b if b > a else nxt))
        nxt = b if b > a else nxt
    return ids, fixed[::-1]


def tokenize_chat(
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    tokenizer: Tokenizer,
    template: str | None = None,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    train_on: TrainOn = "assistant",
    special_in_content: Literal["text", "match"] = "text",
    end_of_turn: Sequence[str] = (),
    **template_kwargs: Any,
) -> TokenizedChat:
    """Render and tokenise a conversation, with its loss mask and labels.

    Args:
        messages: `Message` objects or OpenAI-style dicts.
        tokenizer: The model's tokenizer.
        template: ``None`` (the tokenizer's own), a built-in name, a template file or Jinja source.
        add_generation_prompt: Append the assistant header (for generation; nothing is trained after it).
        tools: JSON schemas of the callable functions.
        train_on: ``assistant`` (every assistant turn), ``last`` (the last assistant turn) or ``all``.
        special_in_content: ``text`` encodes special-token text inside message content as plain
            text; ``match`` matches it as control tokens, exactly as transformers does.
        end_of_turn: Extra end-of-turn marker texts (searched with `END_OF_TURN_MARKERS` and EOS).
        **template_kwargs: Extra template variables.

    Raises:
        ChatTemplateError: The template fails, hides a message's content, or writes no end-of-turn
            marker after an assistant turn.
    """
    renderer = _Renderer(tokenizer, template, tools, add_generation_prompt, template_kwargs)
    dicts = message_dicts(messages)
    text = renderer(dicts)
    sentinel = next(chr(c) for c in range(0xE000, 0xF8FF) if chr(c) not in text)
    specials = tokenizer.special_tokens
    eos = special_token_strings(tokenizer).get("eos_token")
    markers = [m for m in (*end_of_turn, eos, *END_OF_TURN_MARKERS) if m]

    assistants = [i for i, d in enumerate(dicts) if d["role"] == "assistant"]
    if train_on == "last":
        assistants = assistants[-1:]
    spans: list[tuple[int, int]] = []
    if train_on == "all":
        spans = [(0, len(text))]
    else:
        prompted, unprompted = renderer.with_generation_prompt(True), renderer.with_generation_prompt(False)
        for i in assistants:
            start, end = _locate(text, dicts, i, renderer, sentinel)
            # what the model generates after the generation prompt (e.g. Qwen3's think block) is
            # trained, when the template has a generation prompt and the turns before render as a prefix
            with contextlib.suppress(ChatTemplateError):  # a template may refuse a partial chat
                prompt = prompted(dicts[:i])
                if len(unprompted(dicts[:i])) < len(prompt) <= start and text.startswith(prompt):
                    start = len(prompt)
            bound = len(text)
            if i + 1 < len(dicts):  # the marker must come before the next message's content
                with contextlib.suppress(ChatTemplateError):
                    bound = _locate(text, dicts, i + 1, renderer, sentinel)[0]
            hits = [(text.find(m, end, bound), m) for m in markers]
            found = [(at, m) for at, m in hits if at >= 0]
            if not found:
                raise ChatTemplateError(
                    f"chat template {renderer.name}: no end-of-turn marker after assistant message {i} "
                    "(pass end_of_turn=[...] with the marker the template writes); the model would never "
                    "learn to stop"
                )
            at, marker = min(found)
            spans.append((start, at + len(marker)))
    protected = []
    if special_in_content == "text":
        for i, d in enumerate(dicts):
            content = d.get("content") or ""
            if not any(s in content for s in specials):
                continue
            try:
                protected.append(_locate(text, dicts, i, renderer, sentinel))
            except ChatTemplateError:
                if content.strip() in text:
                    raise
                # the template does not write this message (Mistral drops an early system prompt)
    elif special_in_content != "match":
        raise ValueError(f"special_in_content={special_in_content!r}: expected 'text' or 'match'")

    ids: list[int] = []
    ranges: list[tuple[int, int]] = []
    pos = 0
    boundaries = sorted({b for span in spans for b in span})
    for a, b in [*_special_spans(text, specials, protected), (len(text), len(text))]:
        if a > pos:
            cuts = [c - pos for c in boundaries if pos < c < a]
            piece_ids, piece_ranges = _encode_with_cuts(tokenizer, text[pos:a], cuts)
            ids += piece_ids
            ranges += [(pos + x, pos + y) for x, y in piece_ranges]
        if b > a:
            ids.append(specials[text[a:b]])
            ranges.append((a, b))
        pos = b
    mask = [any(x < e and s < y for s, e in spans) for x, y in ranges]
    if train_on == "all" and mask:
        mask[0] = False  # the first token has no context to be predicted from
    if not add_generation_prompt and not any(mask[1:]):
        raise ChatTemplateError(f"chat template {renderer.name}: the conversation has no trainable token")
    return TokenizedChat(input_ids=ids, mask=mask, labels=labels_from_mask(ids, mask), text=text, spans=spans)
