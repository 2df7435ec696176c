"""Preference pairs (prompt + chosen + rejected) for DPO and its variants, tokenised with the chat template.

The layouts people bring, recognised per row (``column_map`` renames ``prompt`` / ``chosen`` /
``rejected`` / ``score_chosen`` / ``score_rejected`` to the data's own columns):

* **explicit strings**: ``prompt``, ``chosen``, ``rejected`` strings (TRL's standard format);
* **implicit prompt**: ``chosen`` and ``rejected`` full texts sharing a prompt, taken as their longest
  common prefix exactly as TRL's ``extract_prompt`` cuts it (a space at the cut goes to the answers);
* **conversational**: ``chosen`` / ``rejected`` message lists, either the answers only (an assistant
  message, with ``prompt`` a string or message list) or whole conversations whose shared turns are the
  prompt (TRL's conversational formats, torchtune's ``chosen`` / ``rejected`` message lists with a
  ``column_map``, ShareGPT ``from``/``value`` turns);
* **UltraFeedback-binarized**: a ``prompt`` string beside whole ``chosen`` / ``rejected`` conversations
  and ``score_chosen`` / ``score_rejected`` (the prompt must be the conversations' last user turn, and a
  chosen answer scored below the rejected one is refused: swapped columns would train the opposite).

Each side is one conversation ``prompt + [answer]`` rendered with the model's chat template and
tokenised by `tokenize_chat` with ``train_on="last"``: only the answer and its end-of-turn marker
are trained (the log-probs DPO compares), exactly as an SFT example of the same chat. The tokens
before each side's first trained token are its prompt, and they must be identical for chosen and
rejected (the pair must compare two answers to one context).

Over ``max_seq_len``, ``truncate`` keeps the END of the prompt (the context nearest the answer) by
removing prompt tokens from its start, the same number for both sides; an answer so long that less
than half of ``max_seq_len`` would remain for the prompt is cut at its end instead (its last label
dropped, as in SFT truncation). ``drop`` drops the pair. Both are counted in the report.

Legend: p prompt tokens, c / r chosen / rejected answer tokens (with anything the template writes after).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ft_data._chat import tokenize_chat
from ft_data._dataset import DatasetReport, LengthPolicy, TokenizedDataset, open_cache, store_cache
from ft_data._labels import IGNORE_INDEX
from ft_data._messages import Message, convert_openai, from_sharegpt, validate_roles
from ft_data._protocol import Tokenizer
from ft_data._sources import read_rows
from ft_data._template import resolve_template
from ft_data.errors import ChatTemplateError, DataRowError, MessageError

__all__ = ["PREFERENCE_FIELDS", "build_preference_dataset", "extract_prompt", "preference_pair"]

CACHE_FORMAT = 1
PREFERENCE_FIELDS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
"""The fields of a preference example (what `ft_data.collate_preference` reads)."""
_COLUMNS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")


def extract_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """TRL's implicit prompt of two full texts: ``(prompt, chosen answer, rejected answer)``.

    The prompt is the longest common prefix of the two texts; when the character before the first
    difference is a space, the cut moves one character left so the space starts the answers (TRL's
    ``extract_prompt``). A character-level prefix can end inside a word ("... is 1" of "is 12" and
    "is 15"): give an explicit ``prompt`` where that matters.

    Raises:
        ValueError: The texts are identical, or one is a prefix of the other (an empty answer).
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if n == limit:
        what = "identical" if len(chosen) == len(rejected) else "one a prefix of the other (an empty answer)"
        raise ValueError(f"chosen and rejected are {what}, so they share no prompt with two answers")
    if n > 0 and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _messages(value: Any, where: str) -> list[Message]:
    """Messages of an OpenAI or ShareGPT list; role order is checked on the whole conversation later."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping) and "from" in value[0]:
        return from_sharegpt(value, where=where)  # a ShareGPT list is always a whole conversation
    return convert_openai(value, where=where)


def _answer(value: Any, where: str) -> Message:
    """One answer: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        if not value.strip():
            raise MessageError(f"{where}: empty answer")
        return Message("assistant", value)
    messages = _messages(value, where)
    if len(messages) != 1:
        raise MessageError(
            f"{where}: expected one assistant message as the answer, got {len(messages)} messages"
        )
    if messages[0].role != "assistant":
        raise MessageError(
            f"{where}[0].role: the answer must be an 'assistant' message, got {messages[0].role!r}"
        )
    if not messages[0].content.strip() and not messages[0].tool_calls:
        raise MessageError(f"{where}[0].content: empty answer")
    return messages[0]


def _prompt(value: Any, where: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise MessageError(f"{where}: empty prompt")
        return [Message("user", value)]
    if isinstance(value, list) and value:
        return _messages(value, where)
    raise MessageError(
        f"{where}: expected a string or a non-empty list of messages, got {type(value).__name__}"
    )


def _score(row: Mapping[str, Any], name: str, column_map: Mapping[str, str], where: str) -> float | None:
    col = column_map.get(name, name)
    value = row.get(col)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise MessageError(f"{where}: field '{col}': expected a number, got {value!r}") from None
    if math.isnan(score):
        raise MessageError(f"{where}: field '{col}': NaN score")
    return score


def preference_pair(
    row: Mapping[str, Any], *, column_map: Mapping[str, str] | None = None, where: str = "row"
) -> tuple[list[Message], Message, Message]:
    """``(prompt messages, chosen answer, rejected answer)`` of one row in any supported layout.

    Args:
        row: The row.
        column_map: Field name -> the data's column name (``{"chosen": "chosen_conversation"}``).
        where: Prefix of error messages (file and row).

    Raises:
        MessageError: A missing field, an empty answer, an answer that is not an assistant message,
            prompts that differ between chosen and rejected, a prompt that does not end where an answer
            can start (role order), or a chosen answer scored below the rejected one.
    """
    cm = dict(column_map or {})
    col = {name: cm.get(name, name) for name in _COLUMNS}
    for side in ("chosen", "rejected"):
        if row.get(col[side]) is None:
            raise MessageError(f"{where}: field '{col[side]}': missing (needed as '{side}')")
    chosen, rejected, prompt_value = row[col["chosen"]], row[col["rejected"]], row.get(col["prompt"])
    at = {side: f"{where}: field '{col[side]}'" for side in _COLUMNS}
    for side, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) and not (isinstance(value, list) and value):
            raise MessageError(
                f"{at[side]}: expected a string or a non-empty list of messages, got {type(value).__name__}"
            )
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise MessageError(
            f"{where}: fields '{col['chosen']}' and '{col['rejected']}': one is a string, the other not"
        )
    if isinstance(chosen, str):
        if prompt_value is None:
            try:
                text, chosen, rejected = extract_prompt(chosen, rejected)
            except ValueError as exc:
                raise MessageError(f"{where}: {exc}") from None
            prompt = _prompt(text.rstrip(), at["prompt"] + " (implicit: the common prefix)")
            chosen, rejected = chosen.lstrip(), rejected.lstrip()
        else:
            prompt = _prompt(prompt_value, at["prompt"])
        pair = (_answer(chosen, at["chosen"]), _answer(rejected, at["rejected"]))
    else:
        whole = [_messages(v, at[s]) for s, v in (("chosen", chosen), ("rejected", rejected))]
        if all(len(w) == 1 and w[0].role == "assistant" for w in whole):  # answers only: prompt is a field
            if prompt_value is None:
                raise MessageError(
                    f"{at['prompt']}: missing (needed as 'prompt' when '{col['chosen']}' holds only the answer)"
                )
            prompt = _prompt(prompt_value, at["prompt"])
            pair = (_answer(chosen, at["chosen"]), _answer(rejected, at["rejected"]))
        else:  # whole conversations: all but the last message is the prompt
            for side, w in zip(("chosen", "rejected"), whole):
                if w[-1].role != "assistant":
                    raise MessageError(
                        f"{at[side]}[{len(w) - 1}].role: the last message must be the 'assistant' answer, "
                        f"got {w[-1].role!r}"
                    )
                if not w[-1].content.strip() and not w[-1].tool_calls:
                    raise MessageError(f"{at[side]}[{len(w) - 1}].content: empty answer")
            if whole[0][:-1] != whole[1][:-1]:
                i = next(
                    (k for k, (a, b) in enumerate(zip(whole[0][:-1], whole[1][:-1])) if a != b),
                    min(len(whole[0]), len(whole[1])) - 1,
                )
                raise MessageError(
                    f"{where}: the prompts differ between '{col['chosen']}' and '{col['rejected']}' at message "
                    f"{i}: a pair must answer one conversation"
                )
            prompt = whole[0][:-1]
            if not prompt:
                raise MessageError(f"{at['chosen']}: no prompt before the answer")
            if isinstance(prompt_value, str):  # UltraFeedback: the prompt column repeats the last user turn
                users = [m for m in prompt if m.role == "user"]
                if not users or users[-1].content != prompt_value:
                    raise MessageError(
                        f"{at['prompt']}: differs from the last user message of '{col['chosen']}' / "
                        f"'{col['rejected']}'"
                    )
            elif prompt_value is not None and _prompt(prompt_value, at["prompt"]) != prompt:
                raise MessageError(f"{at['prompt']}: differs from the shared turns of '{col['chosen']}'")
            pair = (whole[0][-1], whole[1][-1])
    good, bad = _score(row, "score_chosen", cm, where), _score(row, "score_rejected", cm, where)
    if good is not None and bad is not None and good < bad:
        raise MessageError(
            f"{where}: fields '{col['score_chosen']}' ({good:g}) < '{col['score_rejected']}' ({bad:g}): "
            "the chosen answer scored lower (swapped columns?)"
        )
    return prompt, pair[0], pair[1]


def _first_trained(labels: Sequence[int]) -> int:
    """Index of the first trained token (label ``t`` targets token ``t + 1``)."""
    return next(t for t, x in enumerate(labels) if x != IGNORE_INDEX) + 1


def _cut_end(ids: list[int], labels: list[int], limit: int) -> tuple[list[int], list[int]]:
    if len(ids) <= limit:
        return ids, labels
    ids, labels = ids[:limit], labels[:limit]
    labels[-1] = IGNORE_INDEX  # its target was cut off
    return ids, labels


def build_preference_dataset(
    source: str | os.PathLike[str],
    *,
    tokenizer: Tokenizer,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    data_format: str | None = None,
    template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    system: str | None = None,
    special_in_content: Literal["text", "match"] = "text",
    end_of_turn: Sequence[str] = (),
    max_seq_len: int = 2048,
    length_policy: LengthPolicy = "truncate",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> TokenizedDataset:
    """Read, check and tokenise preference pairs once, caching the result like SFT data.

    Args:
        source: Local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file, or a `datasets` name or directory.
        tokenizer: The model's tokenizer.
        column_map: Field -> column (``prompt``, ``chosen``, ``rejected``, ``score_chosen``,
            ``score_rejected``), torchtune's ``column_map``.
        split: Split for `datasets` sources.
        data_format: Force a reader instead of the file suffix.
        template: Chat template (``None``: the tokenizer's own; a built-in name, file or Jinja source).
        template_kwargs: Extra template variables.
        tools: Tool schemas passed to the template for every pair.
        system: System prompt put first in prompts that have none.
        special_in_content: See `tokenize_chat`.
        end_of_turn: Extra end-of-turn markers, see `tokenize_chat`.
        max_seq_len: Longest side kept (tokens).
        length_policy: ``truncate`` (keep the end of the prompt) or ``drop`` pairs over `max_seq_len`.
        cache_dir: Cache directory (default `$FT_DATA_CACHE` or ``~/.cache/ft/data``).
        use_cache: Read and write the cache.

    Returns:
        A `TokenizedDataset` whose examples hold ``chosen_input_ids``, ``chosen_labels``,
        ``rejected_input_ids`` and ``rejected_labels``; its report counts rows, pairs, truncated and
        dropped pairs and trained tokens (both sides).

    Raises:
        DataFileError: Unreadable source.
        DataRowError: A bad row, naming the file, the row and the field.
    """
    column_map = dict(column_map or {})
    unknown = sorted(set(column_map) - set(_COLUMNS))
    if unknown:
        raise ValueError(f"column_map: unknown field {unknown[0]!r} (expected one of {', '.join(_COLUMNS)})")
    if length_policy not in ("truncate", "drop"):
        raise ValueError(f"length_policy={length_policy!r}: expected 'truncate' or 'drop'")
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len={max_seq_len}: a pair needs at least 2 tokens")
    src = read_rows(source, split=split, data_format=data_format)
    template_source = resolve_template(template, tokenizer)[1]
    settings = {
        "format": CACHE_FORMAT,
        "kind": "preference",
        "column_map": sorted(column_map.items()),
        "template_kwargs": dict(template_kwargs or {}),
        "tools": tools,
        "system": system,
        "special_in_content": special_in_content,
        "end_of_turn": list(end_of_turn),
        "max_seq_len": max_seq_len,
        "length_policy": length_policy,
    }
    path, state, hit = open_cache(src, tokenizer, template_source, settings, cache_dir, use_cache)
    if hit is not None:
        return hit
    chat_kw: dict[str, Any] = dict(
        tokenizer=tokenizer,
        template=template_source,
        tools=tools,
        train_on="last",
        special_in_content=special_in_content,
        end_of_turn=end_of_turn,
        **(template_kwargs or {}),
    )
    fields: dict[str, list[list[int]]] = {name: [] for name in PREFERENCE_FIELDS}
    truncated = dropped = 0
    for n, row in enumerate(src.rows, start=1):
        where = f"{src.name}: row {n}"
        try:
            prompt, chosen, rejected = preference_pair(row, column_map=column_map, where=where)
            if system is not None and prompt[0].role != "system":
                prompt = [Message("system", system), *prompt]
            sides = []
            for name, answer in (("chosen", chosen), ("rejected", rejected)):
                chat = [*prompt, answer]
                validate_roles(chat, where=f"{where}: {name}")
                tokens = tokenize_chat(chat, **chat_kw)
                sides.append((list(tokens.input_ids), list(tokens.labels)))
        except (MessageError, ChatTemplateError) as exc:
            raise DataRowError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from exc
        (c_ids, c_labels), (r_ids, r_labels) = sides
        p = _first_trained(c_labels)
        if _first_trained(r_labels) != p or c_ids[:p] != r_ids[:p]:
            at = next(
                (t for t, (a, b) in enumerate(zip(c_ids, r_ids)) if a != b), min(len(c_ids), len(r_ids))
            )
            raise DataRowError(
                f"{where}: the chat template renders the prompt differently for chosen and rejected "
                f"(first difference at token {at}); the pair must share its prompt tokens"
            )
        longest = max(len(c_ids), len(r_ids))
        if longest > max_seq_len:
            if length_policy == "drop":
                dropped += 1
                continue
            longer = longest - p  # [c] or [r], whichever is longer
            keep = min(p, max(max_seq_len - longer, max_seq_len // 2))  # prompt tokens kept, from its end
            cut = p - keep
            c_ids, c_labels = _cut_end(c_ids[cut:], c_labels[cut:], max_seq_len)
            r_ids, r_labels = _cut_end(r_ids[cut:], r_labels[cut:], max_seq_len)
            truncated += 1
            if all(x == IGNORE_INDEX for x in c_labels) or all(x == IGNORE_INDEX for x in r_labels):
                raise DataRowError(
                    f"{where}: no trained token left after truncation to max_seq_len={max_seq_len}; "
                    "use length_policy='drop' or a larger max_seq_len"
                )
        for name, (ids, labels) in (("chosen", (c_ids, c_labels)), ("rejected", (r_ids, r_labels))):
            fields[f"{name}_input_ids"].append(ids)
            fields[f"{name}_labels"].append(labels)
    report = DatasetReport(
        source=src.name,
        rows=len(src.rows),
        examples=len(fields["chosen_labels"]),
        truncated=truncated,
        dropped_too_long=dropped,
        trained_tokens=sum(
            x != IGNORE_INDEX for k in ("chosen_labels", "rejected_labels") for seq in fields[k] for x in seq
        ),
        cache=state,
        cache_path=None if path is None else str(path),
    )
    if report.examples == 0:
        raise DataRowError(
            f"{src.name}: every row was dropped (max_seq_len={max_seq_len}, length_policy=drop)"
        )
    store_cache(path, fields, report)
    return TokenizedDataset(fields, report)
