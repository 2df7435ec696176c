"""The byte <-> printable-character table of byte-level BPE (GPT-2, Radford et al. 2019).

Byte-level vocabularies (Hugging Face ``tokenizer.json``, GGUF ``gpt2`` models) store every token
as a string in which each byte is replaced by a printable character; tiktoken wants raw bytes.
"""

from __future__ import annotations

from functools import cache


@cache
def byte_to_char() -> dict[int, str]:
    """Map each byte to the printable character that stands for it (printable Latin-1 maps to itself)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


@cache
def char_to_byte() -> dict[str, int]:
    """Inverse of `byte_to_char`."""
    return {c: b for b, c in byte_to_char().items()}


def token_to_bytes(token: str) -> bytes | None:
    """Decode a byte-level token string to its bytes; None if a character is outside the table."""
    table = char_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return None


def bytes_to_token(data: bytes) -> str:
    """Encode raw bytes as a byte-level token string."""
    table = byte_to_char()
    return "".join(table[b] for b in data)
