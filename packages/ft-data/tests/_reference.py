"""Reference tokenizers built with the `tokenizers` library from real vocabulary files."""

from __future__ import annotations

from pathlib import Path

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers


def gguf_fields(path: Path) -> dict[str, object]:
    """Tokenizer metadata read with the `gguf` package's own reader (independent of ft)."""
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def byte_level_bpe(
    fields: dict[str, object], pre_tokenizer: pre_tokenizers.PreTokenizer, ignore_merges: bool = False
) -> Tokenizer:
    """A `tokenizers` BPE with the GGUF vocabulary and merges and the given pre-tokenizer."""
    tokens = list(fields["tokenizer.ggml.tokens"])  # type: ignore[call-overload]
    types = list(fields["tokenizer.ggml.token_type"])  # type: ignore[call-overload]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]  # type: ignore[attr-defined]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=ty == 3, normalized=False) for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_tokens(added)
    return tok


def smollm_reference(fields: dict[str, object], digits: bool = True) -> Tokenizer:
    """SmolLM2's tokenizer: every digit isolated, then the GPT-2 byte-level split.

    transformers' GGUF converter ignores `tokenizer.ggml.pre` (it would split digits and the
    space before them differently from the real model), so the reference is built here from the
    GGUF vocabulary and merges with the pre-tokenizer SmolLM2 was trained with. `digits=False`
    gives the deliberately wrong variant.
    """
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    return byte_level_bpe(fields, pre_tokenizers.Sequence(steps))


def split_regex(pattern: str) -> pre_tokenizers.PreTokenizer:
    """Split(pattern, Isolated) then ByteLevel without its own regex."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
