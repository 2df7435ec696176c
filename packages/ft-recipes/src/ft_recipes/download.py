"""``tune download``: fetch a model repository from the Hugging Face Hub through ``huggingface_hub``.

The file list is read first (one API call), so pickle weights (``*.bin``, ``*.pt``, ``*.pth``,
``*.ckpt``, ``*.pkl``), which can run code when loaded, are refused before anything is fetched unless
the user opts in: they are skipped when the repository also has safetensors or GGUF weights, and the
download stops with an error when they are the only weights. The revision is resolved to one commit
first, then every chosen file is fetched by its exact name (``hf_hub_download(local_dir=...)``, four at
a time), which keeps partial files and resumes them with HTTP Range requests. Names are never turned
into glob patterns: a file called ``model [v2].safetensors`` is fetched like any other (a pattern would
read ``[v2]`` as a character class and skip it). A file the repository lists but the server cannot
deliver stops the download with a message naming that file. The token (``--token``, ``$HF_TOKEN`` or
the saved login) is handed to the client and never printed: it is scrubbed from every message.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
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


def _fetch_files(repo_id: str, files: Sequence[str], *, commit: str, target: Path, token: str | None) -> None:
    """Fetch each of ``files`` by its exact name at ``commit`` into ``target``, four at a time.

    Raises:
        DownloadError: A file failed; the message names it (the first failure stops the rest).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import tqdm as hf_tqdm

    def fetch(name: str) -> str:
        return hf_hub_download(repo_id, filename=name, revision=commit, local_dir=target, token=token)

    failure: tuple[str, BaseException] | None = None
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        futures = {pool.submit(fetch, name): name for name in files}
        with hf_tqdm(total=len(files), desc=f"Fetching {len(files)} files", unit="file") as bar:
            for future in as_completed(futures):
                exc = future.exception()
                if exc is not None:
                    failure = (futures[future], exc)
                    break
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the first failure stops the files not yet started
    if failure is None:
        return
    name, exc = failure
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status == 404:
        raise DownloadError(
            f"{repo_id}: {name}: listed by the repository but the server has no such file (HTTP 404)"
        ) from None
    if isinstance(exc, HfHubHTTPError | OSError):
        raise DownloadError(f"{repo_id}: {name}: download failed: {_scrub(str(exc), token)}") from None
    raise exc


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
    from huggingface_hub import HfApi
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
        info = HfApi(token=token).model_info(repo_id, revision=revision)
        commit = info.sha or revision  # one commit for every file, even if the branch moves meanwhile
        files = [s.rfilename for s in info.siblings or []]
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
        _fetch_files(repo_id, chosen, commit=commit, target=target, token=token)
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
