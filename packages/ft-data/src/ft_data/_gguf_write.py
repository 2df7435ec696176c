"""ft tokenizer -> GGUF ``tokenizer.*`` metadata, the way llama.cpp's converter writes it.

The inverse of ``_gguf.py``. A GGUF model file carries its tokenizer as key/values, and llama.cpp
tokenizes from them alone, so they must reproduce the source tokenizer exactly:

* byte-level BPE (``tokenizer.ggml.model = gpt2``): the vocabulary as byte-level strings in id order,
  the merges as ``"a b"`` strings, and ``tokenizer.ggml.pre``, the name of llama.cpp's split regexes
  that equal this tokenizer's (``_pretokenize.to_llama_cpp_pre``; a split llama.cpp does not have is
  refused rather than written under a near name);
* SentencePiece BPE (``llama``): the pieces with their scores and types (SentencePiece's type numbers
  are llama.cpp's), ``tokenizer.ggml.pre = default`` and the dummy-prefix flag. A ``tokenizer.json``
  of a SentencePiece model carries no scores, so, like the converter, the ``tokenizer.model`` beside it
  supplies the pieces, and the ``tokenizer.json`` side the added tokens, special ids and template.

Both: token types (added special tokens ``CONTROL``, other added tokens ``USER_DEFINED``, so llama.cpp
matches them in text exactly when Hugging Face does), BOS / EOS / padding / unknown ids, the
``add_bos_token`` / ``add_eos_token`` flags (always written: llama.cpp otherwise picks a default per
pre-tokenizer), and ``tokenizer.chat_template``. Ids the model has beyond the tokenizer's are padded
with ``[PAD{id}]`` entries of type ``UNUSED``, as the converter pads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ft_data._bpe import BytePairTokenizer
from ft_data._bytes import bytes_to_token
from ft_data._extras import require
from ft_data._pretokenize import to_llama_cpp_pre
from ft_data._protocol import Tokenizer
from ft_data._vocab import merges_from_ranks
from ft_data.errors import TokenizerMetadataError, UnsupportedTokenizerError

__all__ = ["gguf_tokenizer_metadata"]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_PAD_SCORE = -1000.0


def gguf_tokenizer_metadata(tokenizer: Tokenizer, *, vocab_size: int | None = None) -> dict[str, Any]:
    """GGUF key -> plain value (str, int, float, bool, lists) describing ``tokenizer`` for llama.cpp.

    Pass the result to ``ft_models.save_gguf(..., metadata=...)``.

    Args:
        tokenizer: A byte-level BPE tokenizer (``tokenizer.json``, GGUF ``gpt2``, tiktoken files) or a
            SentencePiece BPE one (``.model``, GGUF ``llama``, or a ``tokenizer.json`` with the
            ``tokenizer.model`` beside it).
        vocab_size: The model's embedding rows (default: the tokenizer's size); ids past the tokenizer's
            are written as unused padding entries.

    Raises:
        UnsupportedTokenizerError: A tokenizer llama.cpp cannot reproduce (no matching pre-tokenizer, a
            SentencePiece Unigram model or normalizer, a ``tokenizer.json`` without its SentencePiece
            model), naming it.
        TokenizerMetadataError: ``vocab_size`` is smaller than the tokenizer.
    """
    size = tokenizer.vocab_size if vocab_size is None else vocab_size
    if size < tokenizer.vocab_size:
        name = getattr(tokenizer, "name", type(tokenizer).__name__)
        raise TokenizerMetadataError(
            f"{name}: the tokenizer has {tokenizer.vocab_size} ids but the model only {size} embedding rows"
        )
    if isinstance(tokenizer, BytePairTokenizer):
        out = _gpt2(tokenizer, size)
    else:
        from ft_data._hf_lib import HFLibraryTokenizer
        from ft_data._spm import SentencePieceTokenizer

        if isinstance(tokenizer, SentencePieceTokenizer):
            out = _sentencepiece(tokenizer.name, tokenizer.model_proto, size, {})
        elif isinstance(tokenizer, HFLibraryTokenizer):
            out = _hf_sentencepiece(tokenizer, size)
        else:
            raise UnsupportedTokenizerError(
                f"{getattr(tokenizer, 'name', tokenizer)!r}: a {type(tokenizer).__name__} cannot be written "
                "as GGUF tokenizer metadata"
            )
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "padding": tokenizer.pad_id}
    out.update({f"tokenizer.ggml.{k}_token_id": v for k, v in ids.items() if v is not None})
    out["tokenizer.ggml.add_bos_token"] = bool(getattr(tokenizer, "add_bos_default", False))
    out["tokenizer.ggml.add_eos_token"] = bool(getattr(tokenizer, "add_eos_default", False))
    if tokenizer.chat_template is not None:
        out["tokenizer.chat_template"] = tokenizer.chat_template
    return out


def _pad(i: int) -> str:
    return f"[PAD{i}]"


def _gpt2(tok: BytePairTokenizer, size: int) -> dict[str, Any]:
    pre = to_llama_cpp_pre(tok.pre, tok.ignore_merges, tok.name)
    added = {t.id: t for t in tok.added}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        raw = tok.id_to_bytes[i] if i < len(tok.id_to_bytes) else b""
        if i in added:  # llama.cpp matches added tokens as their text, not as byte-level strings
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        elif raw:  # an entry that is not byte-level text (no merge reaches it) keeps its text
            tokens.append(tok.vocab_texts.get(i) or bytes_to_token(raw))
            types.append(NORMAL)
        else:
            tokens.append(_pad(i))
            types.append(UNUSED)
    merges = tok.merges if tok.merges is not None else merges_from_ranks(tok.ranks)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [f"{bytes_to_token(a)} {bytes_to_token(b)}" for a, b in merges],
        "tokenizer.ggml.add_space_prefix": False,
    }


def _sentencepiece(name: str, proto: bytes, size: int, added: dict[int, tuple[str, bool]]) -> dict[str, Any]:
    """Pieces, scores and types of a serialized SentencePiece model; ``added``: id -> (text, special)."""
    pb = require("sentencepiece.sentencepiece_model_pb2", "sentencepiece", name)
    model = pb.ModelProto()
    model.ParseFromString(proto)
    if model.trainer_spec.model_type != pb.TrainerSpec.BPE:
        raise UnsupportedTokenizerError(
            f"{name}: only SentencePiece BPE models can be written for llama.cpp (its 'llama' tokenizer)"
        )
    norm = model.normalizer_spec
    if norm.name not in ("identity", "") or norm.remove_extra_whitespaces:
        raise UnsupportedTokenizerError(
            f"{name}: SentencePiece normalizer {norm.name!r} has no llama.cpp counterpart"
        )
    pieces = list(model.pieces)
    if len(pieces) > size:
        raise TokenizerMetadataError(
            f"{name}: the tokenizer has {len(pieces)} pieces but the model only {size} embedding rows"
        )
    tokens = [p.piece for p in pieces] + [_pad(i) for i in range(len(pieces), size)]
    scores = [float(p.score) for p in pieces] + [_PAD_SCORE] * (size - len(pieces))
    types = [int(p.type) for p in pieces] + [UNUSED] * (size - len(pieces))
    for i, (text, special) in added.items():
        if i < size:
            tokens[i], scores[i], types[i] = text, _PAD_SCORE, CONTROL if special else USER_DEFINED
    spec = model.trainer_spec
    out: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": bool(norm.add_dummy_prefix),
    }
    if spec.unk_id >= 0:
        out["tokenizer.ggml.unknown_token_id"] = int(spec.unk_id)
    return out


def _hf_sentencepiece(tok: Any, size: int) -> dict[str, Any]:
    """A non-byte-level ``tokenizer.json`` written from the SentencePiece model beside it."""
    model_file = Path(tok.path).with_name("tokenizer.model")
    if not model_file.is_file():
        raise UnsupportedTokenizerError(
            f"{tok.path}: a tokenizer.json that is not byte-level BPE is written for llama.cpp from its "
            f"SentencePiece model, and {model_file} does not exist"
        )
    decoder = tok._impl.get_added_tokens_decoder()
    added = {int(i): (t.content, bool(t.special)) for i, t in decoder.items()}
    return _sentencepiece(str(model_file), model_file.read_bytes(), size, added)
