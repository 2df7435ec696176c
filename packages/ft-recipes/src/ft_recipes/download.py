"""``tune download``: fetch a model repository from the Hugging Face Hub through ``huggingface_hub``.

The file list is read first (one API call), so pickle weights (``*.bin``, ``*.pt``, ``*.pth``,
``*.ckpt``, ``*.pkl``), which can run code when loaded, are refused before anything is fetched unless
the user opts in: they are skipped when the repository also has safetensors or GGUF weights, and the
download stops with an error when they are the only weights. Files land in ``--output-dir`` through
``snapshot_download(local_dir=...)``, which keeps partial files and resumes them with HTTP Range
requests. The token (``--token``, ``$HF_TOKEN`` or the saved login) is handed to the client and never
printed: it is scrubbed from every message.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ft_recipes.errors import DownloadError, UserError

__all__ = ["PICKLE_SUFFIXES", "download"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SAFE_WEIGHTS = (".safetensors", ".gguf")


def _selected(
    files: Sequence[str], include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[str]:
    out = []
    for f in files:
        if include and not any(fnmatch.fnmatch(f, p) for p in include):
            continue
        if exclude and any(fnmatch.fnmatch(f, p) for p in exclude):
            continue
        out.append(f)
    return out


def _scrub(text: str, token: str | None) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.replace(token, "***") if token else line


def download(
    repo_id: str,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    revision: str = "main",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Download ``repo_id`` at ``revision`` into ``output_dir`` (default ``./<repo name>``).

    Args:
        repo_id: ``owner/name`` on the Hub (or on ``$HF_ENDPOINT``).
        output_dir: Destination directory; partial files there are resumed.
        revision: Branch, tag or commit.
        include: Globs of files to fetch (all by default).
        exclude: Globs of files to skip.
        token: Access token; default ``$HF_TOKEN`` or the saved login.
        allow_pickle: Fetch pickle weight files too.

    Returns:
        The output directory.

    Raises:
        UserError: Unknown repository or revision, nothing matches, or only pickle weights.
        DownloadError: Gated repository, network or disk failure.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # retries are the client's business; failures end in one line here
    token = token or os.environ.get("HF_TOKEN") or None
    target = Path(output_dir) if output_dir is not None else Path(repo_id.split("/")[-1])
    try:
        files = HfApi(token=token).list_repo_files(repo_id, revision=revision)
        chosen = _selected(files, include, exclude)
        if not chosen:
            raise UserError(
                f"{repo_id}: no file matches --include/--exclude ({len(files)} files in the repo)"
            )
        pickles = [f for f in chosen if f.endswith(PICKLE_SUFFIXES)]
        if pickles and not allow_pickle:
            if not any(f.endswith(_SAFE_WEIGHTS) for f in chosen):
                raise UserError(
                    f"{repo_id}: only pickle weights ({', '.join(pickles[:3])}), which can run code when "
                    "loaded; pass --allow-pickle to fetch them anyway"
                )
            print(
                f"skipping pickle files (pass --allow-pickle to fetch): {', '.join(pickles)}", file=sys.stderr
            )
            chosen = [f for f in chosen if f not in pickles]
        snapshot_download(
            repo_id, revision=revision, local_dir=target, allow_patterns=chosen, token=token, max_workers=4
        )
    except GatedRepoError:
        raise DownloadError(
            f"{repo_id}: gated repository; accept its terms on the Hub, then pass --token or set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_id}: revision {revision!r} not found") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_id}: repository not found (check the name; a private repository needs --token or HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise DownloadError(f"{repo_id}: download failed: {_scrub(str(exc), token)}") from None
    except OSError as exc:
        raise DownloadError(f"{repo_id}: download failed: {_scrub(str(exc), token)}") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore", "huggingface_hub")):
            raise DownloadError(f"{repo_id}: network error: {_scrub(str(exc), token)}") from None
        raise
    return target
