"""Atomic writes have one implementation: ``_atomic.py``, byte-identical in the four library packages.

The libraries may not import each other, so each holds a copy; this test keeps the copies one text and
checks that no other module of the libraries (or of ft-recipes, which uses ``ft_dist.write_atomic``)
grows its own temp-file / fsync / rename code again.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIES = [ROOT / f"packages/{dist}/src/{module}/_atomic.py" for dist, module in (
    ("ft-dist", "ft_dist"),
    ("ft-models", "ft_models"),
    ("ft-peft", "ft_peft"),
    ("ft-data", "ft_data"),
)]  # fmt: skip
SOURCES = ["ft-dist/src/ft_dist", "ft-models/src/ft_models", "ft-peft/src/ft_peft", "ft-data/src/ft_data",
           "ft-recipes/src/ft_recipes"]  # fmt: skip
# What an own atomic write is made of: a temp file, an fsync, a replacing rename.
FORBIDDEN = {("os", "fsync"), ("os", "replace"), ("tempfile", "mkstemp"), ("tempfile", "NamedTemporaryFile")}


def differing(paths: list[Path]) -> list[Path]:
    """The paths whose bytes differ from the first one's."""
    first = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    return [p for p in paths[1:] if hashlib.sha256(p.read_bytes()).hexdigest() != first]


def own_atomic_code(path: Path) -> list[str]:
    """``module.function`` calls of :data:`FORBIDDEN` in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and (owner.id, node.func.attr) in FORBIDDEN:
                found.append(f"{path}:{node.lineno}: {owner.id}.{node.func.attr}")
    return found


def test_the_four_copies_are_byte_identical(tmp_path: Path) -> None:
    assert all(p.is_file() for p in COPIES), COPIES
    assert differing(COPIES) == []
    # The check can fail: one changed byte in one copy is caught.
    edited = tmp_path / "_atomic.py"
    text = COPIES[2].read_bytes()
    edited.write_bytes(text.replace(b"0o666", b"0o644", 1))
    assert differing([*COPIES[:2], edited, COPIES[3]]) == [edited]


def test_no_module_writes_atomically_on_its_own(tmp_path: Path) -> None:
    offences = [
        hit
        for package in SOURCES
        for path in sorted((ROOT / "packages" / package).rglob("*.py"))
        if path.name != "_atomic.py"
        for hit in own_atomic_code(path)
    ]
    assert offences == []
    # The check can fail: the code the copies replaced is found.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, tempfile\nfd, tmp = tempfile.mkstemp()\nos.fsync(fd)\nos.replace(tmp, 'x')\n"
    )
    assert len(own_atomic_code(sample)) == 3
