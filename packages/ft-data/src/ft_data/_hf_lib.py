"""Hugging Face ``tokenizer.json`` models that are not byte-level BPE (SentencePiece-style BPE
with byte fallback, Unigram, WordPiece), served by the ``tokenizers`` library (extra
``tokenizers``) behind the `ft_data.Tokenizer` protocol."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ft_data._extras import require
from ft_data.errors import TokenizerFileError, TokenizerMetadataError

__all__ = ["HFLibraryTokenizer"]


class HFLibraryTokenizer:
    """A `tokenizers.Tokenizer` with ft's encode contract (no BOS/EOS or special matching unless asked).

    Args:
        path: The ``tokenizer.json`` it was loaded from (copied by `save_pretrained`).
        impl: The loaded `tokenizers.Tokenizer`.
        config: ``tokenizer_config.json`` content (bos/eos/pad names, chat template).
    """

    def __init__(self, path: Path, impl: Any, config: dict[str, Any]) -> None:
        self.path = path
        self.name = str(path)
        self._impl = impl
        self._config = config
        self._special = {t.content: i for i, t in impl.get_added_tokens_decoder().items() if t.special}
        self.add_bos_default = bool(config.get("add_bos_token", False))
        self.add_eos_default = bool(config.get("add_eos_token", False))

    @classmethod
    def from_file(cls, path: Path, config: dict[str, Any]) -> HFLibraryTokenizer:
        """Load `path` with the `tokenizers` library."""
        tokenizers = require("tokenizers", "tokenizers", str(path))
        try:
            impl = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on bad files
            raise TokenizerFileError(
                f"{path}: tokenizers cannot load it ({str(exc).splitlines()[0]})"
            ) from exc
        return cls(path, impl, config)

    def _id_of(self, key: str) -> int | None:
        value = self._config.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        return None if text is None else self._impl.token_to_id(str(text))

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Special added token text -> id."""
        return dict(self._special)

    @property
    def bos_id(self) -> int | None:
        """Beginning-of-sequence id (from ``tokenizer_config.json``)."""
        return self._id_of("bos_token")

    @property
    def eos_id(self) -> int | None:
        """End-of-sequence id."""
        return self._id_of("eos_token")

    @property
    def pad_id(self) -> int | None:
        """Padding id."""
        return self._id_of("pad_token")

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self._impl.get_vocab_size(with_added_tokens=True))

    @property
    def chat_template(self) -> str | None:
        """Jinja chat template from ``tokenizer_config.json``."""
        tpl = self._config.get("chat_template")
        return tpl if isinstance(tpl, str) else None

    def encode(
        self, text: str, *, add_bos: bool = False, add_eos: bool = False, allow_special: bool = False
    ) -> list[int]:
        """Token ids of `text` (see `ft_data.Tokenizer.encode`)."""
        self._impl.encode_special_tokens = not allow_special
        ids: list[int] = list(self._impl.encode(text, add_special_tokens=False).ids)
        if add_bos:
            ids.insert(0, _need(self.bos_id, "BOS", self.name))
        if add_eos:
            ids.append(_need(self.eos_id, "EOS", self.name))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included."""
        return str(self._impl.decode(list(ids), skip_special_tokens=False))

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Copy ``tokenizer.json`` and write the config files."""
        from ft_data._save import hf_config_files, write_files

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, out / "tokenizer.json")
        return write_files(out, hf_config_files(self))


def _need(value: int | None, what: str, name: str) -> int:
    if value is None:
        raise TokenizerMetadataError(f"{name}: the tokenizer has no {what} token")
    return value
