"""SentencePiece BPE -> Hugging Face ``tokenizer.json``.

SentencePiece BPE merges, among adjacent symbols, the pair whose concatenation is the piece with
the best score; a merge list with every two-piece split of every piece, ordered by the piece's
score, makes Hugging Face's merge-list BPE do the same. Whitespace becomes ``▁`` and the dummy
prefix a prepended ``▁``; characters outside the vocabulary fall back to ``<0xNN>`` byte pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_data._extras import require
from ft_data._save import hf_config_files, write_files
from ft_data.errors import UnsupportedTokenizerError

if TYPE_CHECKING:
    from ft_data._spm import SentencePieceTokenizer

__all__ = ["save_spm"]

_SPACE = "\u2581"
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def save_spm(tok: SentencePieceTokenizer, path: Path) -> Path:
    """Write the Hugging Face files for a SentencePiece BPE model."""
    pb = require("sentencepiece.sentencepiece_model_pb2", "sentencepiece", tok.name)
    model = pb.ModelProto()
    model.ParseFromString(tok.model_proto)
    if model.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise UnsupportedTokenizerError(f"{tok.name}: save_pretrained supports SentencePiece BPE models only")
    norm = model.normalizer_spec
    if norm.name not in ("identity", "") or norm.remove_extra_whitespaces:
        raise UnsupportedTokenizerError(f"{tok.name}: SentencePiece normalizer {norm.name!r} cannot be saved")
    pieces = list(model.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    # Rank = position by score (best first); ties keep the id order, as SentencePiece does.
    mergeable = [i for i, p in enumerate(pieces) if p.type in (_NORMAL, _USER_DEFINED)]
    order = sorted(mergeable, key=lambda i: (-pieces[i].score, i))
    rank = {pieces[i].piece: r for r, i in enumerate(order)}
    merges: list[tuple[int, int, int, str, str]] = []
    for text, r in rank.items():
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in rank and right in rank:
                merges.append((r, rank[left], rank[right], left, right))
    merges.sort()
    unk = model.trainer_spec.unk_id
    added = [
        {
            "id": i,
            "content": p.piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": p.type != _USER_DEFINED,
        }
        for i, p in enumerate(pieces)
        if p.type in (_CONTROL, _USER_DEFINED, _UNKNOWN)
    ]
    normalizers: list[dict[str, Any]] = []
    if norm.add_dummy_prefix:
        normalizers.append({"type": "Prepend", "prepend": _SPACE})
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": _SPACE})
    decoders: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if norm.add_dummy_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[unk].piece if unk >= 0 else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": bool(model.trainer_spec.byte_fallback),
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[left, right] for _, _, _, left, right in merges],
        },
    }
    return write_files(path, {"tokenizer.json": tokenizer_json, **hf_config_files(tok)})
