"""The directories of a checkpoint root: which are ft's, which are complete, and tidying up after a kill.

A save or a prune can be killed at any instruction; every state it can leave has a name ft recognises::

    step_N/                    a complete checkpoint: it holds the marker, written *inside the temporary
                               directory before the rename* that publishes it (the rename is the commit)
    .tmp-step_N/               a save in progress, or killed before its rename
    .step_N.old-<12 hex>/      a checkpoint of the same step being replaced (``publish_dir`` moves it aside
                               and deletes it once the new one is in place)
    .del-step_N/               a checkpoint being pruned: renamed out of the way first, then deleted

:func:`clean` removes the temporary and being-deleted directories, renames a moved-aside checkpoint
back when its ``step_N`` is missing, and prunes complete checkpoints beyond ``keep_last``. It touches
only those names, and of the dot-named ones only flat directories (a DCP checkpoint holds plain files
only), so a user's ``step_1/notes.txt`` or anything else in the root is never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ft_dist._atomic import fsync_dir
from ft_dist.errors import CheckpointError

__all__ = [
    "FORMAT",
    "MARKER",
    "checkpoint_info",
    "clean",
    "is_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

MARKER = ".ft-checkpoint.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp-step_(\d+)$")
_OLD_DIR = re.compile(r"^\.step_(\d+)\.old-[0-9a-f]{12}$")  # the name ``publish_dir`` moves a target to
_DEL_DIR = re.compile(r"^\.del-step_(\d+)$")


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The completion marker of the checkpoint directory ``path``, or None when it is not a complete ft one.

    Returns:
        ``{"format", "step", "world_size"}`` and, when the saving run pruned, its ``keep_last`` (dropped
        when it is not a positive integer).
    """
    try:
        data = json.loads((Path(path) / MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("step"), int):
        return None
    keep_last = data.get("keep_last")
    if keep_last is not None and not (type(keep_last) is int and keep_last >= 1):
        del data["keep_last"]
    return data


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a complete ft checkpoint (a directory holding ft's readable marker)."""
    return Path(path).is_dir() and checkpoint_info(path) is not None


def _complete(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint named ``step_N`` directly under ``root``, oldest first."""
    found = []
    for child in root.iterdir() if root.is_dir() else ():
        info = checkpoint_info(child) if _STEP_DIR.match(child.name) and child.is_dir() else None
        if info is not None:
            found.append((int(info["step"]), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir`` (None if there is none).

    Temporary, moved-aside and being-deleted directories, directories without ft's marker and unreadable
    markers are ignored.
    """
    found = _complete(Path(output_dir))
    return found[-1][1] if found else None


def _flat(path: Path) -> bool:
    """A real directory holding plain files only (what a DCP checkpoint is)."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all(child.is_file() and not child.is_symlink() for child in path.iterdir())


def _remove(path: Path) -> None:
    """Delete a checkpoint directory out of the way first: rename to ``.del-step_N``, then delete.

    A kill after the rename leaves a ``.del-step_N`` that :func:`clean` finishes; a kill before it leaves
    the checkpoint complete. Never an unmarked ``step_N``.
    """
    doomed = path.with_name(f".del-{path.name}") if _STEP_DIR.match(path.name) else path
    if doomed != path:
        if doomed.exists():
            shutil.rmtree(doomed)
        path.rename(doomed)
        fsync_dir(path.parent)
    shutil.rmtree(doomed)


def prune_checkpoints(
    output_dir: str | os.PathLike[str], *, keep_last: int, keep: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints (and never ``keep``); one process only.

    Only directories carrying ft's marker are touched. Returns the deleted directories.

    Raises:
        CheckpointError: ``keep_last`` < 1.
    """
    if keep_last < 1:
        raise CheckpointError(f"{output_dir}: keep_last must be >= 1, got {keep_last}")
    spared = Path(keep).absolute() if keep is not None else None
    complete = _complete(Path(output_dir))
    doomed = [p for _, p in complete[: max(0, len(complete) - keep_last)] if p.absolute() != spared]
    for path in doomed:
        _remove(path)
    return doomed


def clean(
    output_dir: str | os.PathLike[str],
    *,
    keep_last: int | None = None,
    keep: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Tidy a checkpoint root after any kill; one process only (rank 0), with no save in flight.

    Removes ``.tmp-step_N`` and ``.del-step_N`` directories, removes a moved-aside ``.step_N.old-*`` whose
    ``step_N`` exists and renames it back to ``step_N`` when that is missing (it is complete: it was
    published before it was moved aside), then prunes complete checkpoints beyond ``keep_last`` (None:
    no pruning), never ``keep``. Returns the directories removed.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for child in sorted(root.iterdir()):
        old = _OLD_DIR.match(child.name)
        if old and _flat(child):
            final = root / f"step_{old.group(1)}"
            if not final.exists() and checkpoint_info(child) is not None:
                child.rename(final)
                fsync_dir(root)
                continue
        if (old or _TMP_DIR.match(child.name) or _DEL_DIR.match(child.name)) and _flat(child):
            shutil.rmtree(child)
            removed.append(child)
    if keep_last is not None:
        removed += prune_checkpoints(root, keep_last=keep_last, keep=keep)
    return removed
