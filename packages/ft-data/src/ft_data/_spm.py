"""SentencePiece models (Kudo & Richardson 2018): BPE with byte fallback (Mistral 7B, Llama 2,
Gemma) and Unigram (Kudo 2018), through the ``sentencepiece`` extra.

A GGUF ``tokenizer.ggml.model = llama`` vocabulary (pieces, scores, types) is turned back into a
SentencePiece ``ModelProto``, so both file kinds run on the same engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_data._added import AddedMatcher, AddedToken
from ft_data._extras import require
from ft_data.errors import TokenizerFileError, TokenizerMetadataError

__all__ = ["SentencePieceTokenizer", "load_spm", "spm_from_gguf"]

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class SentencePieceTokenizer:
    """A SentencePiece model behind the `ft_data.Tokenizer` protocol.

    Control pieces (``<s>``, ``[INST]``) are the special tokens: SentencePiece never produces them
    from text, and ft matches their text only with ``allow_special=True``; each span between two
    matches is encoded on its own (with the model's dummy-prefix rule).

    Args:
        name: Where it came from, for messages.
        model_proto: Serialized ``ModelProto``.
        chat_template: Jinja chat template, if known.
        add_bos_default: Whether the source adds BOS by default.
    """

    def __init__(
        self, name: str, model_proto: bytes, chat_template: str | None = None, add_bos_default: bool = True
    ) -> None:
        spm = require("sentencepiece", "sentencepiece", name)
        self.name = name
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as exc:
            raise TokenizerFileError(f"{name}: not a valid SentencePiece model ({exc})") from exc
        sp = self._sp
        self._special = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i)}
        self._matcher = AddedMatcher([AddedToken(t, i, special=True) for t, i in self._special.items()])
        self._chat_template = chat_template
        self.add_bos_default = add_bos_default
        self.add_eos_default = False

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Control piece text -> id."""
        return dict(self._special)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id."""
        return _opt(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id."""
        return _opt(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        """Padding id (SentencePiece models often have none)."""
        return _opt(self._sp.pad_id())

    @property
    def vocab_size(self) -> int:
        """Number of pieces."""
        return int(self._sp.get_piece_size())

    @property
    def chat_template(self) -> str | None:
        """Jinja chat template, if the source had one."""
        return self._chat_template

    def encode(
        self, text: str, *, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text` (see `ft_data.Tokenizer.encode`)."""
        if allow_special and self._matcher:
            ids: list[int] = []
            for span, tok in self._matcher.split(text):
                ids += self._sp.encode(span) if tok is None else [tok.id]
        else:
            ids = list(self._sp.encode(text))
        if add_bos:
            ids.insert(0, _need(self.bos_id, "BOS", self.name))
        if add_eos:
            ids.append(_need(self.eos_id, "EOS", self.name))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control pieces are written as their text."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if self._sp.is_control(i):
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                out.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write Hugging Face tokenizer files (``tokenizer.json`` converted from the model)."""
        from ft_data._spm_save import save_spm

        return save_spm(self, Path(path))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def _opt(i: int) -> int | None:
    return None if i < 0 else int(i)


def _need(value: int | None, what: str, name: str) -> int:
    if value is None:
        raise TokenizerMetadataError(f"{name}: the tokenizer has no {what} token")
    return value


def load_spm(path: Path) -> SentencePieceTokenizer:
    """Load a SentencePiece ``.model`` file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenizerFileError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return SentencePieceTokenizer(str(path), data)


def spm_from_gguf(path: Path, meta: dict[str, Any]) -> SentencePieceTokenizer:
    """Rebuild a SentencePiece BPE model from GGUF ``tokenizer.ggml.*`` keys (llama.cpp ``llama``)."""
    require("sentencepiece", "sentencepiece", str(path))
    pb = require("sentencepiece.sentencepiece_model_pb2", "sentencepiece", str(path))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores"):
        if key not in meta:
            raise TokenizerMetadataError(f"{path}: GGUF has no tokenizer metadata key {key!r}")
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    types = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.vocab_size = len(tokens)
    model.trainer_spec.byte_fallback = _BYTE in types
    model.trainer_spec.unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    model.trainer_spec.bos_id = int(meta.get("tokenizer.ggml.bos_token_id", -1))
    model.trainer_spec.eos_id = int(meta.get("tokenizer.ggml.eos_token_id", -1))
    model.trainer_spec.pad_id = int(meta.get("tokenizer.ggml.padding_token_id", -1))
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    unk = model.trainer_spec.unk_id
    # SentencePiece finds its special ids by piece text (default "</s>"...): name the pieces the ids hold.
    spec = model.trainer_spec
    for piece, i in (("unk_piece", spec.unk_id), ("bos_piece", spec.bos_id), ("eos_piece", spec.eos_id),
                     ("pad_piece", spec.pad_id)):  # fmt: skip
        if 0 <= i < len(tokens):
            setattr(spec, piece, tokens[i])
    for i, (text, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = model.pieces.add()
        piece.piece, piece.score = text, float(score)
        # SentencePiece allows one UNKNOWN piece: the unk id. Other pieces typed unknown (padding
        # fillers) are never produced from text, which is what UNUSED means.
        if i == unk:
            kind = _UNKNOWN
        elif kind == _UNKNOWN:
            kind = _UNUSED
        piece.type = kind if kind in (_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE, _UNKNOWN) else _NORMAL
    tpl = meta.get("tokenizer.chat_template")
    return SentencePieceTokenizer(
        str(path),
        model.SerializeToString(),
        chat_template=tpl if isinstance(tpl, str) else None,
        add_bos_default=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
    )
