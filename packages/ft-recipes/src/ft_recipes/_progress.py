"""The one gate for what a training run prints: rank 0 alone speaks.

Under ``torchrun`` every rank runs the same recipe code, so a setup line (``[data] ...``, ``[full]
device=...``) printed unguarded appears once per rank. Every progress line of the recipes goes through
:func:`progress` instead, and the loop's metrics log (tqdm bar, loggers) is made only where
:func:`is_main_process` holds. Errors are not progress: they are raised, and ``tune``'s launcher prints
the first failing rank's line once.

Importing this module does not import torch (``tune validate`` stays cheap).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

__all__ = ["is_main_process", "progress"]


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only process): the rank that prints, logs and writes
    single-copy outputs.

    The process group's rank once it is started, else ``RANK`` as torchrun sets it for every worker
    before the group exists (so the lines printed before ``init_process_group`` are gated too).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return os.environ.get("RANK", "0") == "0"


def progress(line: str, *, file: TextIO | None = None) -> None:
    """Print ``line`` (to stderr unless ``file`` is given) on rank 0; nothing on the other ranks."""
    if is_main_process():
        print(line, file=file if file is not None else sys.stderr, flush=True)
