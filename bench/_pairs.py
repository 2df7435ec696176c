"""The random preference pairs of the ``dpo`` workload, identical in ft's process and in TRL's.

Both sides draw the same token ids from one seeded generator (this module imports torch only, so it runs
in a peer environment too). Every pair is a 128-token prompt and two 128-token answers (127 random tokens
and the end-of-sequence id), so each side of a pair is a 256-token row; ids 0 and 1 are padding and
end-of-sequence, the random tokens are drawn from ``[2, vocab)``.

TRL tokenises text, so :func:`pair_texts` writes each id ``i`` as the word ``t<i>`` and
:func:`word_tokenizer` (peer side) maps the words back to exactly those ids: TRL sees the same pairs.
"""

from __future__ import annotations

import torch

__all__ = ["EOS_ID", "PAD_ID", "pair_texts", "random_pairs"]

PAD_ID, EOS_ID = 0, 1
PAD, EOS = "<pad>", "</s>"


def random_pairs(
    n: int, vocab: int, *, prompt_len: int = 128, answer_len: int = 128, seed: int = 0
) -> list[tuple[list[int], list[int], list[int]]]:
    """``n`` pairs of token ids ``(prompt, chosen, rejected)``; both answers end with :data:`EOS_ID`."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(2, vocab, (prompt_len,), generator=g).tolist()
        chosen, rejected = (torch.randint(2, vocab, (answer_len - 1,), generator=g).tolist() for _ in "cr")
        out.append((prompt, [*chosen, EOS_ID], [*rejected, EOS_ID]))
    return out


def _words(ids: list[int]) -> str:
    return " ".join(EOS if i == EOS_ID else f"t{i}" for i in ids)


def pair_texts(pairs: list[tuple[list[int], list[int], list[int]]]) -> dict[str, list[str]]:
    """TRL's ``prompt`` / ``chosen`` / ``rejected`` columns for the pairs (answers start with a space)."""
    return {
        "prompt": [_words(p) for p, _, _ in pairs],
        "chosen": [" " + _words(c) for _, c, _ in pairs],
        "rejected": [" " + _words(r) for _, _, r in pairs],
    }


def word_tokenizer(vocab: int):  # type: ignore[no-untyped-def]
    """A transformers fast tokenizer mapping ``t<i>`` to id ``i`` (peer side; needs ``tokenizers``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {PAD: PAD_ID, EOS: EOS_ID, **{f"t{i}": i for i in range(2, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS)
