"""Mistral's Tekken tokenizer files (JSON: tiktoken ranks in base64, a split regex, special tokens).

Ids are ranks shifted by the number of special tokens, which occupy the first ids; the vocabulary
is cut to ``default_vocab_size - default_num_special_tokens`` ranks.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from ft_data._added import AddedToken
from ft_data._bpe import BytePairTokenizer
from ft_data._pretokenize import PreTokenizer
from ft_data._vocab import tiktoken_id_to_bytes
from ft_data.errors import TokenizerFileError, TokenizerMetadataError

__all__ = ["load_tekken"]

# Special tokens of Tekken files that predate the `special_tokens` list (versions up to v7).
_LEGACY_SPECIALS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip


def load_tekken(path: Path, data: dict[str, Any]) -> BytePairTokenizer:
    """Build a tokenizer from a parsed Tekken JSON file."""
    try:
        config = data["config"]
        pattern = config["pattern"]
        n_special = int(config["default_num_special_tokens"])
        vocab_size = int(config["default_vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenizerMetadataError(f"{path}: Tekken config lacks {exc}") from exc
    listed = data.get("special_tokens")
    specials: dict[str, int] = (
        {t["token_str"]: int(t["rank"]) for t in listed}
        if listed is not None
        else {text: i for i, text in enumerate(_LEGACY_SPECIALS)}
    )
    for i in range(len(specials), n_special):
        specials[f"<SPECIAL_{i}>"] = i
    inner = vocab_size - n_special
    try:
        ranks = {
            base64.b64decode(t["token_bytes"]): int(t["rank"]) + n_special for t in data["vocab"][:inner]
        }
    except (KeyError, TypeError, binascii.Error) as exc:
        raise TokenizerFileError(f"{path}: malformed Tekken vocab entry ({exc})") from exc
    if len(ranks) != inner:
        raise TokenizerFileError(f"{path}: Tekken vocab has {len(ranks)} of {inner} ranks (truncated file?)")
    return BytePairTokenizer(
        name=path.name,
        ranks=ranks,
        id_to_bytes=tiktoken_id_to_bytes(ranks, specials),
        pre=PreTokenizer((pattern,), keep_gaps=False),
        added=[AddedToken(text, i, special=True) for text, i in specials.items()],
        bos_id=specials.get("<s>"),
        eos_id=specials.get("</s>"),
        pad_id=specials.get("<pad>"),
        add_bos_default=True,
        ignore_merges=True,
    )
