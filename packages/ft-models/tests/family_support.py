"""Family-agnostic checks against transformers (eager attention, fp32), shared by the family tests.

Each family test module describes its tiny awkward-shape configs as plain ``config.json`` dicts; the
helpers here build the transformers reference from such a dict, load ft's model from the directory
transformers saved, and run the same checks for every family: logits, padded batches, packed rows
against each document alone, ft's saved directory reloaded by transformers, and KV-cache decoding
across a sliding-window boundary. Every check
takes deliberately wrong variants and asserts that they miss the same tolerance by ``MARGIN`` times.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from llama_support import SHAPES, padded_batch, randomize, save_weights_only
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

import ft_models
from ft_models import CausalLM, DecoderConfig

ATOL = 1e-5  # fp32 logits against transformers
CACHE_RTOL, CACHE_ATOL = 1e-5, 1e-4  # cached decoding against a full forward
MARGIN = 100  # a wrong variant misses the tolerance by at least this factor (observed: > 1000)
PROMPT_LENGTHS = [3, 9, 6]  # ragged, left-padded to 9; windows in the tests are shorter
# Packed rows: document lengths per row, a negative length is padding. Every window in the table (5-7)
# is shorter than most documents, so windows apply inside documents, across block boundaries.
PACKED = [[17, 4, 13, -6], [25, 15]]
NEW_TOKENS = 16


def shape(name: str, **overrides: Any) -> dict[str, Any]:
    """One of llama_support's awkward shapes (odd vocab, head_dim != hidden / heads, GQA 4:1 or 7:1)."""
    return {**SHAPES[name], "max_position_embeddings": 256, "rms_norm_eps": 1e-5, **overrides}


def make_reference(
    config: dict[str, Any], *, std: float = 0.1, seed: int = 0, norms: bool = True
) -> PreTrainedModel:
    """A random fp32 transformers model (eager attention) for a ``config.json`` dict, in eval mode."""
    data = dict(config)
    cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    randomize(model, std=std, seed=seed, norms=norms)
    return model


def reference_from_handwritten(config: dict[str, Any], directory: Path, *, seed: int = 0) -> PreTrainedModel:
    """Write ``config.json`` by hand, let transformers build the reference from it, save its weights."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    randomize(model, std=0.1, seed=seed)
    save_weights_only(model, directory)  # type: ignore[arg-type]
    return model


def variant(model: CausalLM, **changes: Any) -> CausalLM:
    """The same weights under a changed config (a wrong variant: window off by one, cap off, ...)."""
    config = dataclasses.replace(model.config, **changes)
    wrong = ft_models.build_model(config)
    wrong.load_state_dict(model.state_dict())
    return wrong.eval()


def swapped(model: CausalLM, replace: Callable[[torch.nn.Module], torch.nn.Module | None]) -> CausalLM:
    """A copy of ``model`` whose submodules ``replace`` returns a substitute for (e.g. another norm)."""
    wrong = variant(model)
    for name, module in list(wrong.named_modules()):
        new = replace(module)
        if new is not None:
            parent, _, attr = name.rpartition(".")
            setattr(wrong.get_submodule(parent), attr, new)
    return wrong


def not_close(a: torch.Tensor, b: torch.Tensor, *, rtol: float = 0.0, atol: float = ATOL) -> bool:
    """True when ``a`` misses ``b`` by more than ``MARGIN`` times the tolerance somewhere.

    A wrong variant must fail clearly, not by rounding noise at the edge of the tolerance.
    """
    return bool(((a - b).abs() > MARGIN * (atol + rtol * b.abs())).any())


@torch.no_grad()
def check_logits(hf: PreTrainedModel, model: CausalLM, wrong: dict[str, CausalLM], *, seq: int = 40) -> None:
    """ft's logits equal transformers' within 1e-5 on ``seq`` tokens; every wrong variant is off."""
    ids = torch.randint(0, hf.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(seq))
    expected = hf(ids).logits
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=ATOL)
    for name, other in wrong.items():
        assert not_close(other(ids), expected), f"wrong variant {name!r} passed"


@torch.no_grad()
def check_padded(hf: PreTrainedModel, model: CausalLM, *, left: bool) -> None:
    """A padded batch (``document_ids == -1`` pads) matches transformers' attention-masked forward."""
    ids, mask, docs, positions = padded_batch([23, 9, 17], hf.config.vocab_size, left=left)
    expected = hf(ids, attention_mask=mask, position_ids=positions).logits
    got = model(ids, document_ids=docs)
    real = mask.bool()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)
    if left:  # wrong variant: pads not masked leak into the rows
        assert not_close(model(ids, position_ids=positions)[real], expected[real])


def packed_batch(
    layout: list[list[int]], vocab: int, *, seed: int = 3
) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``input_ids`` and ``document_ids`` ``[b, s]`` for ``layout``, and each document's ``(row, slice)``."""
    g = torch.Generator().manual_seed(seed)
    width = sum(abs(n) for n in layout[0])
    ids = torch.randint(3, vocab, (len(layout), width), generator=g)
    docs = torch.full((len(layout), width), -1)
    spans, start = [], 0
    for r, row in enumerate(layout):
        start = 0
        for d, n in enumerate(row):
            if n > 0:
                docs[r, start : start + n] = d
                spans.append((r, slice(start, start + n)))
            start += abs(n)
    return ids, docs, spans


@torch.no_grad()
def check_packed(hf: PreTrainedModel, model: CausalLM, wrong: dict[str, CausalLM]) -> None:
    """Packed rows (documents of 4-25 tokens, padding) match transformers on each document alone.

    Besides the row's own wrong variants (a window off by one must miss inside long documents), a
    leaking packer (each row attended as one document, positions still per document) must miss.
    """
    ids, docs, spans = packed_batch(PACKED, hf.config.vocab_size)
    got = model(ids, document_ids=docs)
    assert torch.isfinite(got).all()
    expected = [hf(ids[r : r + 1, sl]).logits[0] for r, sl in spans]
    for (r, sl), want in zip(spans, expected, strict=True):
        torch.testing.assert_close(got[r, sl], want, rtol=0, atol=ATOL)
    leaky = model(ids, position_ids=ft_models.positions_from_documents(docs))
    for name, bad in {
        "leaky-packing": leaky,
        **{n: m(ids, document_ids=docs) for n, m in wrong.items()},
    }.items():
        missed = [not_close(bad[r, sl], want) for (r, sl), want in zip(spans, expected, strict=True)]
        assert any(missed), f"wrong variant {name!r} passed on packed rows"


@torch.no_grad()
def check_saved_loads_in_transformers(
    hf: PreTrainedModel,
    model: CausalLM,
    out: Path,
    *,
    expect: dict[str, Any],
    break_config: dict[str, Any],
) -> dict[str, Any]:
    """ft's saved directory loads in transformers with identical logits; a broken key changes them.

    Args:
        hf: The reference the ft model was loaded from.
        model: The ft model.
        out: Target directory.
        expect: Keys the written ``config.json`` must hold with these values.
        break_config: Keys overwritten in the saved config.json for the wrong variant.

    Returns:
        The written config.json.
    """
    ft_models.save_pretrained(model, out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [type(hf).__name__]
    assert "rope_theta" in config
    assert "rope_parameters" not in config
    for key, value in expect.items():
        assert config[key] == value, key
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded) is type(hf)
    tied = bool(hf.config.tie_word_embeddings)
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) is tied
    ids = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(7))
    expected = hf(ids).logits
    assert torch.equal(reloaded(ids).logits, expected)
    (out / "config.json").write_text(json.dumps({**config, **break_config}))
    wrong = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert not_close(wrong(ids).logits, expected), f"config {break_config} did not change the logits"
    return config


def _prompts(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (n,), generator=g) for n in PROMPT_LENGTHS]


@torch.no_grad()
def _decode(model: CausalLM, rows: list[torch.Tensor], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy steps on a cache (prompt + 4 slots, so it also grows); tokens and the logits that chose them."""
    ids, docs = ft_models.left_pad(rows)
    cache = model.new_cache(len(rows), ids.shape[1] + 4)
    logits = model(ids, document_ids=docs, cache=cache)[:, -1]
    tokens, chosen = [], []
    for _ in range(steps):
        token = logits.argmax(-1)
        tokens.append(token)
        chosen.append(logits)
        logits = model(token[:, None], cache=cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(chosen, 1)


@torch.no_grad()
def check_cache_decoding(hf: PreTrainedModel, model: CausalLM, wrong: dict[str, CausalLM]) -> None:
    """Cached greedy decoding of a left-padded batch matches full forwards of each row alone.

    Prompt + new tokens run well past the model's sliding window, so the window must hold in the cache.
    The reference is both ft's full forward and transformers' (identical greedy tokens, logits within
    ``rtol=1e-5, atol=1e-4``); the wrong variants decode with the same weights and must disagree.
    """
    rows = _prompts(hf.config.vocab_size)
    tokens, logits = _decode(model, rows, NEW_TOKENS)
    for row in tokens:
        assert len(set(row.tolist())) >= 8, row  # a model that repeats one token proves nothing
    for i, prompt in enumerate(rows):
        full = torch.cat([prompt, tokens[i]])[None]  # the row alone, unpadded
        reference = model(full)[0, len(prompt) - 1 : -1]
        torch.testing.assert_close(logits[i], reference, rtol=CACHE_RTOL, atol=CACHE_ATOL)
        assert torch.equal(reference.argmax(-1), tokens[i])
        hf_reference = hf(full).logits[0, len(prompt) - 1 : -1]
        torch.testing.assert_close(logits[i], hf_reference, rtol=CACHE_RTOL, atol=CACHE_ATOL)
    for name, other in wrong.items():
        _, bad = _decode(other, rows, NEW_TOKENS)
        assert any(
            not_close(bad[i], logits[i], rtol=CACHE_RTOL, atol=CACHE_ATOL) for i in range(len(rows))
        ), f"wrong variant {name!r} decoded like the reference (or within {MARGIN}x the tolerance)"


def ft_from_reference(hf: PreTrainedModel, directory: Path) -> CausalLM:
    """Save the reference with transformers (its own config schema) and load it with ft."""
    hf.save_pretrained(directory)
    model = ft_models.from_pretrained(directory)
    assert isinstance(model.config, DecoderConfig)
    return model
