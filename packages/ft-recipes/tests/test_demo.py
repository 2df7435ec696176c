"""The demo entry point end to end: the real SmolLM2-135M-Instruct answers through ft's own stack.

The demo runs as a user runs it (a subprocess, `python -m ft_recipes.demo`): ft-data reads the
tokenizer from the GGUF file, ft-models loads and dequantises the weights and decodes greedily.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ft_recipes.demo", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_demo_answers_a_factual_question() -> None:
    out = _demo("What is the capital of France?", "--max-new-tokens", "16", "--top", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    prompt_line = next(line for line in lines if line.startswith("prompt ("))
    # ChatML markers are single special tokens (1 = <|im_start|>, 2 = <|im_end|> in SmolLM2's vocab),
    # not their characters spelled out.
    ids = [int(i) for i in prompt_line.split(":", 1)[1].strip(" []").split(",")]
    assert ids[0] == 1
    assert ids.count(2) == 1
    continuation = next(line for line in lines if line.startswith("continuation:"))
    assert "Paris" in continuation
    # One line per generated token with its top candidates.
    steps = [line for line in lines if re.match(r"\s*\d+\s+\d+ ", line)]
    assert len(steps) >= 3
    assert all(len(re.findall(r"=[01]\.\d{3}", line)) == 2 for line in steps)


def test_demo_missing_model_is_a_one_line_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.gguf"
    out = _demo("hi", "--model", str(missing))
    assert out.returncode == 2
    assert out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1
    assert str(missing) in err[0]
    assert err[0].startswith("error:")
