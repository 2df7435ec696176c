"""``gguf_tokenizer_metadata`` against llama.cpp's own converter output and tokenizer.

The references are GGUF files llama.cpp's converter wrote from the original Hugging Face tokenizers: the
real SmolLM2-135M-Instruct file and llama.cpp's ``ggml-vocab-*`` files with their expected ids. ft reads
one, writes its tokenizer back as metadata, and (1) the keys equal the converter's, (2) a GGUF file holding
only the written keys tokenizes llama.cpp's test strings to llama.cpp's ids. Wrong variants (another
pre-tokenizer name, SentencePiece without its dummy prefix) are shown to fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

import ft_data
from ft_data._gguf import read_gguf_metadata
from ft_data._pretokenize import from_llama_cpp_pre
from ft_data.errors import TokenizerMetadataError, UnsupportedTokenizerError

# The converter writes `unknown_token_id` from tokenizer_config.json for byte-level vocabularies, which
# llama.cpp's BPE tokenizer never uses; ft's byte-level tokenizers carry no unknown token.
_NOT_CARRIED = {"tokenizer.ggml.unknown_token_id"}


def write_metadata_gguf(path: Path, meta: dict[str, Any]) -> Path:
    """A GGUF file with ``meta`` and no tensors, typed as llama.cpp's converter types such values."""
    writer = gguf.GGUFWriter(str(path), "llama")
    vt = gguf.GGUFValueType
    for key, value in meta.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            sub = (
                vt.STRING
                if isinstance(value[0], str)
                else vt.FLOAT32
                if isinstance(value[0], float)
                else vt.INT32
            )
            writer.add_key_value(key, list(value), vt.ARRAY, sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def _same_split(a: str, b: str) -> bool:
    return from_llama_cpp_pre(a, "a") == from_llama_cpp_pre(b, "b")


def test_smollm2_metadata_equals_the_converters(smollm_gguf: Path, tmp_path: Path) -> None:
    """SmolLM2's tokenizer keys as llama.cpp's converter wrote them, from ft's tokenizer of the file."""
    original = read_gguf_metadata(smollm_gguf, prefix="tokenizer.")
    written = ft_data.gguf_tokenizer_metadata(ft_data.load_tokenizer(smollm_gguf))
    assert written.keys() - original.keys() == {"tokenizer.ggml.add_eos_token"}  # False, llama.cpp's default
    assert written["tokenizer.ggml.add_eos_token"] is False
    for key in original.keys() - _NOT_CARRIED:
        assert written[key] == original[key], key
    assert written["tokenizer.ggml.pre"] == "smollm"
    assert written["tokenizer.chat_template"].startswith("{% for message in messages %}")
    # Padding: a model with more embedding rows gets unused [PAD] entries after the vocabulary.
    padded = ft_data.gguf_tokenizer_metadata(ft_data.load_tokenizer(smollm_gguf), vocab_size=49155)
    assert padded["tokenizer.ggml.tokens"][-3:] == ["[PAD49152]", "[PAD49153]", "[PAD49154]"]
    assert padded["tokenizer.ggml.token_type"][-3:] == [5, 5, 5]


def test_hf_tokenizer_files_get_the_llama_cpp_pre_name(tokenizers: dict[str, Any], tmp_path: Path) -> None:
    """Tokenizers read from Hugging Face files (ft's saved SmolLM2 and Llama 3 tokenizers) map their
    Hugging Face split regexes to the names llama.cpp's converter gives those models, and a GGUF written
    from them encodes a text as the source does."""
    text = "Hello 12345 world!\n\n  ☀️ naïve <|im_start|> I'm 3.14159 ok"
    for name, pre in {"smollm": "smollm", "llama3": "llama-bpe"}.items():
        source, _ = tokenizers[name]
        saved = tmp_path / name
        source.save_pretrained(saved)
        hf = ft_data.load_tokenizer(saved / "tokenizer.json")
        meta = ft_data.gguf_tokenizer_metadata(hf)
        assert meta["tokenizer.ggml.pre"] == pre
        back = ft_data.load_tokenizer(write_metadata_gguf(tmp_path / f"{name}.gguf", meta))
        assert back.encode(text, allow_special=True) == source.encode(text, allow_special=True)
        assert back.bos_id == source.bos_id
        assert back.eos_id == source.eos_id


def test_unwritable_tokenizers_are_refused(tokenizers: dict[str, Any], smollm_gguf: Path) -> None:
    tekken, _ = tokenizers["tekken"]  # tiktoken-style split that drops unmatched text: no llama.cpp name
    with pytest.raises(UnsupportedTokenizerError) as err:
        ft_data.gguf_tokenizer_metadata(tekken)
    assert "no llama.cpp pre-tokenizer" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(TokenizerMetadataError, match="49152 ids but the model only 100 embedding rows"):
        ft_data.gguf_tokenizer_metadata(ft_data.load_tokenizer(smollm_gguf), vocab_size=100)


def test_sentencepiece_model_written_for_llama_cpp(mistral_data: Path, corpus: str, tmp_path: Path) -> None:
    """Mistral's SentencePiece BPE (``mistral_instruct_tokenizer_240323.model.v3``): pieces, scores, types and the dummy prefix
    written as the ``llama`` tokenizer; read back, it encodes a corpus slice as the original does."""
    source = ft_data.load_tokenizer(mistral_data / "mistral_instruct_tokenizer_240323.model.v3")
    meta = ft_data.gguf_tokenizer_metadata(source, vocab_size=source.vocab_size + 2)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.pre"] == "default"
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.tokens"][-1] == f"[PAD{source.vocab_size + 1}]"
    back = ft_data.load_tokenizer(write_metadata_gguf(tmp_path / "spm.gguf", meta))
    text = corpus[:20_000]
    assert back.encode(text) == source.encode(text)
    # Wrong variant: without the dummy prefix the ids change.
    meta["tokenizer.ggml.add_space_prefix"] = False
    wrong = ft_data.load_tokenizer(write_metadata_gguf(tmp_path / "wrong.gguf", meta))
    assert wrong.encode(text) != source.encode(text)


BYTE_LEVEL = [
    "gpt-2", "mpt", "llama-bpe", "qwen2", "qwen35", "starcoder", "refact", "command-r", "falcon",
    "deepseek-coder",
]  # fmt: skip
SENTENCEPIECE = ["llama-spm", "phi-3"]


def _cases(path: Path) -> list[tuple[str, list[int]]]:
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    if texts[-1] == "" and ids[-1] == "":
        texts, ids = texts[:-1], ids[:-1]
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids, strict=True)]


@pytest.mark.slow  # the vocabulary files come from a 77 MB source distribution, downloaded once
@pytest.mark.parametrize("name", BYTE_LEVEL + SENTENCEPIECE)
def test_llama_cpp_vocab_round_trip(llama_cpp_vocab: Path, name: str, tmp_path: Path) -> None:
    """Each of llama.cpp's vocabularies ft reads is written back as the converter wrote it, and the file
    of written keys gives llama.cpp's expected ids for its test strings."""
    path = llama_cpp_vocab / f"ggml-vocab-{name}.gguf"
    original = read_gguf_metadata(path, prefix="tokenizer.")
    n = len(original["tokenizer.ggml.tokens"])
    written = ft_data.gguf_tokenizer_metadata(ft_data.load_tokenizer(path), vocab_size=n)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        assert written.get(key) == original.get(key), key
    if "tokenizer.ggml.scores" in original:
        assert written["tokenizer.ggml.scores"] == pytest.approx(original["tokenizer.ggml.scores"])
    if original["tokenizer.ggml.model"] == "gpt2":
        assert _same_split(written["tokenizer.ggml.pre"], original["tokenizer.ggml.pre"])
    for key in ("bos", "eos", "padding"):
        k = f"tokenizer.ggml.{key}_token_id"
        assert written.get(k) == original.get(k), k
    back = ft_data.load_tokenizer(write_metadata_gguf(tmp_path / "w.gguf", written))
    cases = _cases(path)
    failures = [t for t, ids in cases if back.encode(t, allow_special=True) != ids]
    assert failures == []
    # Wrong variant: another split (byte level) or no dummy prefix (SentencePiece) fails some cases.
    if written["tokenizer.ggml.model"] == "gpt2":
        written["tokenizer.ggml.pre"] = "llama-bpe" if written["tokenizer.ggml.pre"] == "gpt-2" else "gpt-2"
    else:
        written["tokenizer.ggml.add_space_prefix"] = not written["tokenizer.ggml.add_space_prefix"]
    wrong = ft_data.load_tokenizer(write_metadata_gguf(tmp_path / "wrong.gguf", written))
    assert any(wrong.encode(t, allow_special=True) != ids for t, ids in cases)
