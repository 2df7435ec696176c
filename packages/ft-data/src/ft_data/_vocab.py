"""Byte-level vocabulary + merge list -> tiktoken ranks (BPE, Sennrich et al. 2016).

A merge list says which adjacent pair merges first; tiktoken ranks the *result* of a merge. The
rank of a token is the index of the first merge that produces it. When the ids already grow in
merge order (true of vocabularies trained with ``tokenizers`` or converted from tiktoken) the ids
serve as ranks and encode needs no remapping; otherwise ranks are merge indices and a table maps
them back to ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from ft_data._bytes import byte_to_char, token_to_bytes
from ft_data.errors import TokenizerMetadataError, UnsupportedTokenizerError

__all__ = ["ByteLevelTables", "byte_level_tables", "merges_from_ranks"]

# Bytes that never occur in UTF-8 text; vocabularies trained on text may lack their tokens.
_NEVER_IN_UTF8 = {0xC0, 0xC1, *range(0xF5, 0x100)}


@dataclass
class ByteLevelTables:
    """What `BytePairTokenizer` needs from a vocabulary."""

    ranks: dict[bytes, int]
    id_of_rank: list[int] | None
    id_to_bytes: list[bytes]
    merges: list[tuple[bytes, bytes]]
    drop_from: int | None = None
    texts: dict[int, str] = field(default_factory=dict)  # entries that are not byte-level text, as written


def byte_level_tables(
    vocab: Mapping[str, int],
    merges: Iterable[tuple[str, str]],
    added: Mapping[int, str],
    where: str,
    ignore_merges: bool = False,
) -> ByteLevelTables:
    """Build ranks and the decode table from a byte-level vocabulary.

    Args:
        vocab: Byte-level token string -> id (added tokens may be included).
        merges: Merge pairs in priority order, as byte-level strings.
        added: Id -> text of added tokens (decoded as their UTF-8 text, never merged into).
        where: File name for error messages.
        ignore_merges: Also rank tokens no merge produces (whole-piece lookups, Llama 3 style).
    """
    size = max([*vocab.values(), *added.keys()], default=-1) + 1
    id_to_bytes = [b""] * size
    texts: dict[int, str] = {}
    for tok, i in vocab.items():
        raw = token_to_bytes(tok)
        id_to_bytes[i] = raw if raw is not None else tok.encode("utf-8")
        if raw is None and i not in added:
            texts[i] = tok
    for i, text in added.items():
        id_to_bytes[i] = text.encode("utf-8")

    missing = []
    single: dict[bytes, int] = {}
    for b, ch in sorted(byte_to_char().items()):
        if ch in vocab and vocab[ch] not in added:
            single[bytes([b])] = vocab[ch]
        elif b not in _NEVER_IN_UTF8:
            missing.append(b)
    if len(missing) > 32:
        raise UnsupportedTokenizerError(
            f"{where}: not a byte-level vocabulary, {len(missing)} of 256 byte tokens missing "
            f"(first: {missing[0]:#04x})"
        )

    merged: dict[bytes, int] = {}  # token bytes -> id, in first-merge order
    merge_bytes: list[tuple[bytes, bytes]] = []
    for first, second in merges:
        left, right = token_to_bytes(first), token_to_bytes(second)
        if left is None or right is None:
            raise TokenizerMetadataError(f"{where}: merge {first!r} {second!r} is not byte-level text")
        merge_bytes.append((left, right))
        joined = left + right
        if joined in merged or len(joined) < 2:
            continue
        result = vocab.get(first + second)
        if result is None:
            raise TokenizerMetadataError(
                f"{where}: merge {first!r} {second!r} gives {first + second!r}, which is not in the vocab"
            )
        if result not in added:
            merged[joined] = result
    extra: dict[bytes, int] = {}
    if ignore_merges:
        for tok_str, i in vocab.items():
            raw = token_to_bytes(tok_str)
            if raw is not None and len(raw) > 1 and raw not in merged and i not in added:
                extra[raw] = i

    ids = list(merged.values())
    in_order = all(x < y for x, y in pairwise(ids))
    if in_order and (not extra or not ids or min(extra.values()) > ids[-1]):
        ranks = {**single, **merged, **dict(sorted(extra.items(), key=lambda kv: kv[1]))}
        # A byte without a token is dropped (as Hugging Face does): it gets a rank past every id
        # and encode filters those out.
        ranks |= {bytes([b]): size + k for k, b in enumerate(missing)}
        return ByteLevelTables(ranks, None, id_to_bytes, merge_bytes, size if missing else None, texts)
    # Ids are not in merge order: ranks are positions, mapped back to ids after encoding.
    ranks = {}
    id_of_rank: list[int] = []
    for table in (single, merged, extra):
        for raw_tok, tok_id in table.items():
            ranks[raw_tok] = len(id_of_rank)
            id_of_rank.append(tok_id)
    drop_from = len(id_of_rank)
    ranks |= {bytes([b]): drop_from + k for k, b in enumerate(missing)}
    return ByteLevelTables(ranks, id_of_rank, id_to_bytes, merge_bytes, drop_from if missing else None, texts)


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """A merge list that reproduces tiktoken's ranks in merge-list BPE.

    Every token is produced by every split into two tokens, ordered by the rank of the result and
    then of the parts. A part may rank *after* the result (tiktoken can reach a token through a
    later-ranked part), so no split is left out. With ``ignore_merges`` this reproduces tiktoken.
    """
    out: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, r in ranks.items():
        if len(tok) < 2:
            continue
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None:
                out.append((r, rl, rr, left, right))
    out.sort()
    return [(left, right) for _, _, _, left, right in out]


def tiktoken_id_to_bytes(ranks: Mapping[bytes, int], specials: Mapping[str, int]) -> list[bytes]:
    """Decode table for ranks-as-ids plus special tokens."""
    size = max([*ranks.values(), *specials.values()]) + 1
    table = [b""] * size
    for tok, i in ranks.items():
        table[i] = tok
    for text, i in specials.items():
        table[i] = text.encode("utf-8")
    return table


def check_ranks(ranks: Sequence[int], where: str) -> None:
    """Ranks must be distinct."""
    if len(set(ranks)) != len(ranks):
        raise TokenizerMetadataError(f"{where}: duplicate ranks in the vocabulary")
