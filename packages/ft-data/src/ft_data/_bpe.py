"""Byte-level BPE (Sennrich et al. 2016; GPT-2, Radford et al. 2019) on tiktoken's Rust core.

tiktoken merges, inside each pre-tokenized piece, the adjacent pair whose concatenation has the
lowest rank, and emits a piece that is itself a token directly. With ranks in merge order this is
the merge-list BPE of Hugging Face ``tokenizers`` and llama.cpp, so every byte-level format
(``tokenizer.json``, tiktoken files, Tekken, GGUF ``gpt2``) becomes ranks + a split regex + added
tokens, and one native call encodes a whole text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import tiktoken

from ft_data._added import AddedMatcher, AddedToken
from ft_data._normalize import Normalizer
from ft_data._pretokenize import PreTokenizer, iter_pieces
from ft_data.errors import TokenizerMetadataError

__all__ = ["BytePairTokenizer"]


class BytePairTokenizer:
    """A byte-level BPE tokenizer (implements `ft_data.Tokenizer`).

    Args:
        name: Where it came from (file name), for messages.
        ranks: Token bytes -> merge rank, for every token the merges can produce. Ranks must
            order multi-byte tokens as the merge list does.
        id_to_bytes: Bytes of every id (index = id), for decoding; ``b""`` for unused ids.
        pre: The split regex stages.
        id_of_rank: Maps a rank to its id when ranks are not ids (None: ranks are ids).
        added: Added tokens (special or not), matched as whole strings.
        normalizer: Unicode normalization applied to text outside added tokens.
        bos_id: Beginning-of-sequence id. eos_id and pad_id likewise.
        chat_template: Jinja chat template, kept for saving.
        add_bos_default: Whether the source format adds BOS by default (saved for transformers).
        add_eos_default: Same for EOS.
        merges: The merge list as byte pairs, for saving; None derives it from the ranks.
        ignore_merges: A piece that is a token is emitted whole (Llama 3 style), kept for saving.
        drop_from: Ranks from this value on stand for bytes the vocabulary lacks; they are dropped.
        fuse: Replace known stacks of split stages by one equivalent regex (faster; off to test).
        vocab_texts: Vocabulary entries that are not byte-level text (no merge reaches them), id -> the
            text the source file holds, kept for writing the vocabulary back (GGUF).
    """

    def __init__(
        self,
        *,
        name: str,
        ranks: dict[bytes, int],
        id_to_bytes: Sequence[bytes],
        pre: PreTokenizer,
        id_of_rank: Sequence[int] | None = None,
        added: Sequence[AddedToken] = (),
        normalizer: Normalizer | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
        add_bos_default: bool = False,
        add_eos_default: bool = False,
        merges: Sequence[tuple[bytes, bytes]] | None = None,
        ignore_merges: bool = False,
        drop_from: int | None = None,
        fuse: bool = True,
        vocab_texts: Mapping[int, str] | None = None,
    ) -> None:
        self.name = name
        self.pre = pre
        self.normalizer = normalizer or Normalizer()
        self.added = tuple(added)
        self.ranks = ranks
        self.id_to_bytes = list(id_to_bytes)
        self.merges = merges
        self.ignore_merges = ignore_merges
        self.vocab_texts = dict(vocab_texts or {})
        self.add_bos_default = add_bos_default
        self.add_eos_default = add_eos_default
        self._bos_id, self._eos_id, self._pad_id = bos_id, eos_id, pad_id
        self._chat_template = chat_template
        self._id_of_rank = id_of_rank
        self._drop_from = drop_from
        self._special = {t.content: t.id for t in self.added if t.special}
        self._plain_added = AddedMatcher([t for t in self.added if not t.special])
        self._all_added = AddedMatcher(self.added)
        self._stages = pre.python_stages(fuse)
        self._enc = tiktoken.Encoding(
            name=name, pat_str=pre.native_pattern(fuse), mergeable_ranks=ranks, special_tokens={}
        )

    # -- Tokenizer protocol -------------------------------------------------------------------
    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special token text -> id."""
        return dict(self._special)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id."""
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id."""
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        """Padding id."""
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        """Largest id + 1."""
        return len(self.id_to_bytes)

    @property
    def chat_template(self) -> str | None:
        """Jinja chat template, if the source had one."""
        return self._chat_template

    def encode(
        self, text: str, *, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text`.

        Args:
            text: Any string.
            add_bos: Prepend BOS (error if the model has none).
            add_eos: Append EOS (error if the model has none).
            allow_special: Match special-token text (``<|im_end|>``) as its id; otherwise it is
                encoded as ordinary text. Non-special added tokens always match.
        """
        matcher = self._all_added if allow_special else self._plain_added
        if matcher:
            ids: list[int] = []
            for span, tok in matcher.split(text):
                if tok is None:
                    ids += self._encode_plain(span)
                else:
                    ids.append(tok.id)
        else:
            ids = self._encode_plain(text)
        if add_bos:
            ids.insert(0, _need(self._bos_id, "BOS", self.name))
        if add_eos:
            ids.append(_need(self._eos_id, "EOS", self.name))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as in Hugging Face."""
        table = self.id_to_bytes
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
        from ft_data._save import save_byte_level

        return save_byte_level(self, Path(path))

    # -- internals -----------------------------------------------------------------------------
    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if self.normalizer.steps:
            text = self.normalizer(text)
        if self.pre.add_prefix_space and not text.startswith(" "):
            text = " " + text
        native = self._enc.encode_ordinary
        if self._stages:
            out: list[int] = []
            for piece in iter_pieces(self._stages, text):
                out += native(piece)
        else:
            out = native(text)
        if self._drop_from is not None and out and max(out) >= self._drop_from:
            out = [r for r in out if r < self._drop_from]
        if self._id_of_rank is not None:
            out = list(map(self._id_of_rank.__getitem__, out))
        return out

    def __repr__(self) -> str:
        return (
            f"BytePairTokenizer({self.name!r}, vocab_size={self.vocab_size}, stages={len(self.pre.stages)})"
        )


def _need(value: int | None, what: str, name: str) -> int:
    if value is None:
        raise TokenizerMetadataError(f"{name}: the tokenizer has no {what} token")
    return value
