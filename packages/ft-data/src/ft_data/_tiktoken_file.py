"""tiktoken model files (``base64-token rank`` lines): Llama 3 and Llama 4.

The file holds only the mergeable ranks; the split regex and the special tokens are fixed by the
model family, recognised here by the number of ranks. Ids are ranks, special tokens follow the
last rank.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from ft_data._added import AddedToken
from ft_data._bpe import BytePairTokenizer
from ft_data._pretokenize import LLAMA3, PreTokenizer
from ft_data._vocab import tiktoken_id_to_bytes
from ft_data.errors import TokenizerFileError, UnsupportedTokenizerError

__all__ = ["load_tiktoken_file", "read_tiktoken_ranks"]

# Llama 4's split (o200k style): cased words keep a trailing contraction, `/` ends a punctuation run.
LLAMA4 = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _llama3_specials() -> list[str]:
    named = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
        "<|eot_id|>", "<|python_tag|>", "<|image|>",
    ]  # fmt: skip
    return named + [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(named))]


def _reserved(group: str, start: int, count: int) -> list[str]:
    return [f"<|{group}_reserved_special_token_{i}|>" for i in range(start, start + count)]


def _llama4_specials() -> list[str]:
    basic = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    post_train = [
        "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
        *_reserved("text_post_train", 0, 6), "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>",
        *_reserved("text_post_train", 8, 61),
    ]  # fmt: skip
    vision = [
        "<|image_start|>", "<|image_end|>", *_reserved("vision", 0, 2), "<|tile_x_separator|>",
        "<|tile_y_separator|>", *_reserved("vision", 2, 4), "<|image|>", *_reserved("vision", 6, 1),
        "<|patch|>", *_reserved("vision", 7, 1041),
    ]  # fmt: skip
    reasoning = [*_reserved("reasoning", 0, 8), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"]
    named = basic + post_train + vision + reasoning
    return named + [f"<|reserved_special_token_{i}|>" for i in range(2048 - len(named))]


# number of ranks -> (family, split regex, special tokens, (bos, eos, pad))
_FAMILIES = {
    128_000: (
        "llama3",
        LLAMA3,
        _llama3_specials,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"),
    ),
    200_000: (
        "llama4",
        LLAMA4,
        _llama4_specials,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad|>"),
    ),
}


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse ``base64 rank`` lines; a malformed or truncated line raises naming the line number."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TokenizerFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerFileError(
                f"{path}: line {n} is not 'base64-token rank' (truncated file?)"
            ) from exc
    return ranks


def load_tiktoken_file(path: Path) -> BytePairTokenizer:
    """Load a Llama 3 or Llama 4 tiktoken ``tokenizer.model``."""
    ranks = read_tiktoken_ranks(path)
    if len(ranks) not in _FAMILIES:
        raise UnsupportedTokenizerError(
            f"{path}: tiktoken file with {len(ranks)} ranks is no known family "
            f"(known: {', '.join(f'{f[0]}={n}' for n, f in _FAMILIES.items())})"
        )
    family, pattern, specials_of, (bos, eos, pad) = _FAMILIES[len(ranks)]
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerFileError(f"{path}: ranks are not 0..{len(ranks) - 1} (truncated or edited file?)")
    specials = {text: len(ranks) + i for i, text in enumerate(specials_of())}
    return BytePairTokenizer(
        name=f"{path.name} ({family})",
        ranks=ranks,
        id_to_bytes=tiktoken_id_to_bytes(ranks, specials),
        pre=PreTokenizer((pattern,), keep_gaps=False),
        added=[AddedToken(text, i, special=True) for text, i in specials.items()],
        bos_id=specials[bos],
        eos_id=specials[eos],
        pad_id=specials[pad],
        add_bos_default=True,
        ignore_merges=True,
    )
