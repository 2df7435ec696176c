"""Atomic file and directory writes: a reader sees the old content or the new, never a torn one.

The usual protocol: write into a temporary name beside the target, flush and fsync it, rename it over
the target (atomic on POSIX within one file system), then fsync the parent directory so the rename
itself survives a crash. Files are created with mode ``0o666`` minus the process umask, as ``open``
would create them (``tempfile.mkstemp`` would leave them ``0o600``). A directory is published by
renaming a fully written temporary directory into place; an existing target is moved aside first and
deleted only after the new one is in place, so a failure leaves the old one where it was.

The library packages of ft do not import each other, so this module exists once per package, as
byte-identical copies (a test compares them); edit them together.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_path", "fsync_dir", "publish_dir", "write_atomic"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, so the names created or renamed in it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for a writer that opens files itself; publish it on success.

    When the block ends normally the file is fsynced and renamed over ``path``; on any error it is
    removed and ``path`` is untouched.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_atomic(path: str | os.PathLike[str], content: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``content`` (bytes, or a function writing into a binary file) to ``path`` atomically.

    Returns:
        ``path`` as a ``Path``. On any error the target is untouched and the temporary file removed.
    """
    with atomic_path(path) as tmp, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
        if isinstance(content, bytes | bytearray):
            f.write(content)
        else:
            content(f)
    return Path(path)


def publish_dir(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Move the fully written directory ``tmp`` to ``target`` durably, replacing any existing ``target``.

    Every file in ``tmp`` is fsynced first. An existing ``target`` is renamed aside, and deleted only once
    ``tmp`` is in its place; if the rename fails, it is put back.
    """
    src, dst = Path(tmp), Path(target)
    for child in src.rglob("*"):
        if child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(src)
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:12]}") if dst.exists() else None
    if old is not None:
        dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        if old is not None:
            old.rename(dst)
        raise
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst
