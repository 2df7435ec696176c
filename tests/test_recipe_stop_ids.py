"""Generation stops at the token a chat's training mask teaches the model to end its turn with.

`ft_recipes.steps.stop_token_ids` (generate and eval) and ft-data's chat masks read one list of
end-of-turn markers, `ft_data.END_OF_TURN_MARKERS`. With SmolLM2's real tokenizer and chat template,
the last trained token of an assistant turn must be a stop id, both as shipped (EOS is `<|im_end|>`,
which also ends a turn) and saved with EOS set to `<|endoftext|>`, as many ChatML models ship it:
there the turn still ends with `<|im_end|>`, so stopping at EOS alone (the wrong variant) would run
past the end of the turn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ft_data
import ft_models
from ft_recipes.steps import stop_token_ids

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]


def _tokenizer(tmp_path: Path, eos: str | None) -> ft_data.Tokenizer:
    tok = ft_data.load_tokenizer(ft_models.smollm2_gguf_path())
    if eos is None:
        return tok
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": eos}))
    return ft_data.load_tokenizer(tmp_path)


@pytest.mark.parametrize("eos", [None, "<|endoftext|>"], ids=["as-shipped", "eos-endoftext"])
def test_the_trained_end_of_turn_token_stops_generation(tmp_path: Path, eos: str | None) -> None:
    tok = _tokenizer(tmp_path, eos)
    chat = ft_data.tokenize_chat(CHAT, tokenizer=tok)
    trained = [int(t) for t in chat.labels if int(t) != ft_data.IGNORE_INDEX]
    assert tok.decode(trained) == "hello there<|im_end|>"  # the content, then the end-of-turn marker
    end = trained[-1]
    assert end in stop_token_ids(tok)
    if eos is not None:  # wrong variant: stopping at EOS only would run past the end of the turn
        assert tok.decode([tok.eos_id]) == eos
        assert end != tok.eos_id
