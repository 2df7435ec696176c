"""The bad-input corpus's one check: a real `tune` process refuses the input cleanly and harms nothing.

Every corpus case (``tests/test_bad_input_*.py``) runs `tune ...` as a subprocess in a directory it
prepared, then :func:`assert_refused` checks what a user sees and keeps: a non-zero exit status (2 for
bad input unless the case says otherwise), no traceback, at most three non-empty lines on stderr, the
first starting with ``error:`` and naming what is wrong, and every file that existed before the run
byte-identical afterwards, with no new file left behind (empty directories are allowed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["assert_refused", "snapshot", "tune"]


def tune(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the installed `tune ARGS` in ``cwd`` (one thread, no colour, no hub access)."""
    script = Path(sys.executable).with_name("tune")
    full = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    full.pop("FT_DEBUG", None)
    return subprocess.run(
        [str(script), *args],
        cwd=cwd,
        env=full,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(roots: Iterable[Path]) -> dict[str, str]:
    """Every regular file under ``roots``: path -> sha256 of its bytes."""
    out: dict[str, str] = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_refused(
    *args: str,
    cwd: Path,
    names: str | Iterable[str],
    code: int = 2,
    watch: Iterable[Path] = (),
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: int = 300,
) -> str:
    """Run `tune ARGS` and check it is refused cleanly; return the error line.

    Args:
        args: The command line after `tune`.
        cwd: Where it runs; every file under it is watched.
        names: Text(s) the error line must contain (the file, key or row at fault).
        code: The expected exit status (2: bad input; 1: an expected failure).
        watch: More directories whose files must stay byte-identical (and gain no file).
        env, input, timeout: As for :func:`tune`.
    """
    roots = [cwd, *watch]
    before = snapshot(roots)
    done = tune(*args, cwd=cwd, env=env, input=input, timeout=timeout)
    shown = f"tune {' '.join(args)}\nexit {done.returncode}\nstderr:\n{done.stderr}\nstdout:\n{done.stdout[-2000:]}"
    assert done.returncode == code, shown
    assert "Traceback" not in done.stderr, shown
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, shown
    # Around the one error line only ft's own tagged progress lines ("[lora] ...") may appear:
    # no warnings, no stack, no second message.
    assert lines[-1] == errors[0], shown
    assert all(line.startswith("[") for line in lines[:-1]), shown
    for text in [names] if isinstance(names, str) else names:
        assert text in errors[0], shown
    after = snapshot(roots)
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    assert not changed, f"files changed or removed: {changed}\n{shown}"
    assert not added, f"files left behind: {added}\n{shown}"
    return errors[0]
