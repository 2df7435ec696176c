"""ft's lm-eval backend (``FtLM``) against lm-eval's own HF backend (``HFLM``) on the same weights, per request.

The same tiny HF directory (awkward shapes, SmolLM2's real tokenizer) goes through both backends in
fp32: every ``loglikelihood`` request (shared contexts, an empty context, trailing spaces, special-token
text, contexts longer than the window) agrees within 1e-4 with the same greedy flag; rolling
log-likelihoods over several windows agree; ``generate_until`` returns the same text, stop strings
included. Each comparison is also run on a deliberately wrong variant (context tokens scored too, the
continuation split one token early, context and continuation encoded apart, a shorter rolling window,
stop strings ignored), which it must reject by a margin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from lm_eval_support import make_model

from ft_recipes.lm_eval_model import FtLM, score_continuations

TOL = 1e-4
REQUESTS = [
    ("Question: which number follows 3?\nAnswer:", " 4"),
    ("Question: which number follows 3?\nAnswer:", " 5"),
    ("Question: which number follows 3?\nAnswer:", " none of these numbers, surely"),
    ("The weather today is", " sunny with a chance of rain"),
    ("", "A text that starts from nothing at all."),
    ("A context that ends with spaces   ", "and a continuation"),
    ("<|im_start|>user\nSay hi<|im_end|>\n", "<|im_start|>assistant\nHi there!"),
    ("word " * 60, "the end of a context longer than the window"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("lm_eval_parity"))


@pytest.fixture(scope="module")
def backends(model_dir: Path) -> tuple[HFLM, FtLM]:
    torch.manual_seed(0)
    hf = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=3, max_length=48)
    ft = FtLM(str(model_dir), device="cpu", dtype="float32", batch_size=4, max_length=48)
    return hf, ft


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _worst(a: list[tuple[float, bool]], b: list[tuple[float, bool]]) -> float:
    return max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))


def _greedy_request(hf: HFLM) -> tuple[str, str]:
    """A request whose continuation is the model's own greedy text (so its greedy flag is True)."""
    context = "Question: which number follows 7?\nAnswer:"
    ids = torch.tensor([hf.tok_encode(context)])
    out = hf.model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
    return context, hf.tokenizer.decode(out)


def test_loglikelihood_per_request_matches_hflm(backends: tuple[HFLM, FtLM]) -> None:
    hf, ft = backends
    requests = [*REQUESTS, _greedy_request(hf)]
    expected = hf.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    got = ft.loglikelihood(_instances("loglikelihood", requests), disable_tqdm=True)
    assert _worst(expected, got) <= TOL, list(zip(expected, got, strict=True))
    assert [g for _, g in got] == [g for _, g in expected]
    assert expected[-1][1]
    assert not all(g for _, g in expected)
    assert len({round(x, 3) for x, _ in expected}) == len(expected)  # distinct scores


def _token_pairs(ft: FtLM) -> list[tuple[list[int], list[int]]]:
    return [ft._encode_pair(c, x) for c, x in REQUESTS if c]


def test_wrong_splits_are_rejected(backends: tuple[HFLM, FtLM]) -> None:
    """Scoring context tokens too, splitting one token early, or encoding context and continuation
    apart all move the scores far beyond the tolerance."""
    hf, ft = backends
    kept = [r for r in REQUESTS if r[0]]
    expected = hf.loglikelihood(_instances("loglikelihood", kept), disable_tqdm=True)
    pairs = _token_pairs(ft)
    right = score_continuations(ft.model, pairs, batch_size=4, max_length=ft.max_length)
    assert _worst(expected, right) <= TOL

    # The first two wrong splits move context tokens into the continuation: only requests with a
    # context token to move and no truncation (a continuation may not exceed the window) take part.
    fits = [i for i, (c, x) in enumerate(pairs) if len(c) > 1 and len(c) + len(x) <= ft.max_length]
    assert len(fits) >= len(pairs) // 2
    with_context = [(pairs[i][0][:1], pairs[i][0][1:] + pairs[i][1]) for i in fits]
    early = [(pairs[i][0][:-1], pairs[i][0][-1:] + pairs[i][1]) for i in fits]
    apart = [(ft.tok_encode(c), ft.tok_encode(x, add_special_tokens=False)) for c, x in kept]
    for wrong, margin in ((with_context, 5.0), (early, 1.0)):
        scores = score_continuations(ft.model, wrong, batch_size=4, max_length=ft.max_length)
        assert _worst([expected[i] for i in fits], scores) > margin
    scores = score_continuations(ft.model, apart, batch_size=4, max_length=ft.max_length)
    assert _worst(expected, scores) > 1.0  # the trailing-space request tokenizes differently


def test_batching_and_context_sharing_do_not_change_scores(backends: tuple[HFLM, FtLM]) -> None:
    """One request at a time (no shared context, no padding) gives the batched numbers."""
    _, ft = backends
    pairs = _token_pairs(ft)
    batched = score_continuations(ft.model, pairs, batch_size=16, max_length=ft.max_length)
    alone = [score_continuations(ft.model, [p], batch_size=1, max_length=ft.max_length)[0] for p in pairs]
    assert _worst(batched, alone) <= TOL
    with pytest.raises(ValueError, match="empty context"):
        score_continuations(ft.model, [([], [1])])


def test_distinct_contexts_in_one_forward_match_hflm(backends: tuple[HFLM, FtLM]) -> None:
    """A batch where no two requests share a context is scored in one forward per row (left-padded,
    no cache): within 1e-4 of HFLM with padding and a truncated context in the batch. Wrong variant:
    the same path fed each context one token short of its continuation (the split one token early)."""
    hf, ft = backends
    kept = [r for r in REQUESTS if r[0]]
    expected = hf.loglikelihood(_instances("loglikelihood", kept), disable_tqdm=True)
    pairs = _token_pairs(ft)
    firsts = sorted({tuple(c): i for i, (c, _) in reversed(list(enumerate(pairs)))}.values())
    assert len(firsts) >= 5  # one request per context
    assert len({len(pairs[i][0]) for i in firsts}) >= 4  # padding in the batch
    distinct = [pairs[i] for i in firsts]
    got = score_continuations(ft.model, distinct, batch_size=16, max_length=ft.max_length)
    assert _worst([expected[i] for i in firsts], got) <= TOL
    assert [g for _, g in got] == [expected[i][1] for i in firsts]
    early = [(c[:-1], c[-1:] + x) for c, x in distinct if len(c) > 1]
    assert len(early) == len(distinct)
    wrong = score_continuations(ft.model, early, batch_size=16, max_length=ft.max_length)
    assert _worst([expected[i] for i in firsts], wrong) > 1.0


def test_loglikelihood_rolling_matches_hflm(backends: tuple[HFLM, FtLM]) -> None:
    hf, ft = backends
    texts = [("A long text. " * 30,), ("short",), ("Numbers: " + ", ".join(map(str, range(40))),)]
    expected = hf.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
    got = ft.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
    lengths = [len(ft.tok_encode(t[0])) for t in texts]
    assert max(lengths) > 2 * ft.max_length  # several windows
    for e, g, n in zip(expected, got, lengths, strict=True):
        assert abs(e - g) <= TOL * n, (e, g)

    short = FtLM(ft.model, tokenizer=ft.tokenizer, batch_size=4, max_length=ft.max_length // 2)
    wrong = short.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
    assert max(abs(e - w) for e, w in zip(expected, wrong, strict=True)) > 5.0


def test_generate_until_matches_hflm(backends: tuple[HFLM, FtLM]) -> None:
    hf, ft = backends
    prompts = ["Count on from 4: 4, 5,", "The weather today is", "Once upon a time", "x"]
    free = {"until": [], "max_gen_toks": 16, "do_sample": False}
    reference = hf.generate_until(
        _instances("generate_until", [(p, free) for p in prompts]), disable_tqdm=True
    )
    for text in reference:  # a model that says something: not one repeated token
        assert len(set(ft.tok_encode(text, add_special_tokens=False))) >= 8, reference
    stop = reference[1][len(reference[1]) // 2 :][:4]  # a piece of one answer becomes a stop string
    kwargs = {"until": [stop], "max_gen_toks": 16, "do_sample": False}
    requests = [(p, kwargs) for p in prompts]
    expected = hf.generate_until(_instances("generate_until", requests), disable_tqdm=True)
    got = ft.generate_until(_instances("generate_until", requests), disable_tqdm=True)
    assert got == expected
    assert expected[1] == reference[1][: reference[1].index(stop)]  # the stop string cut that answer

    ignored = ft.generate_until(_instances("generate_until", [(p, free) for p in prompts]), disable_tqdm=True)
    assert ignored == reference
    assert ignored != expected
