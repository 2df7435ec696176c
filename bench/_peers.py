"""Peer libraries in their own virtual environments, built once and cached, with ft's exact torch.

Peers are measured with the same torch build as ft (a ratio between two torch builds compares kernels,
not libraries), so every peer environment pins ``torch`` and its CUDA/Triton wheels to the versions
installed in the environment running this module (the one ``uv.lock`` gives ft). Each environment is
created with ``uv venv`` + ``uv pip install`` under ``~/.cache/ft-bench/peers/<name>-torch<version>``
(``$FT_BENCH_PEERS`` overrides the root) and reused while its marker file says it was built with the same
package list. Only package registries are needed; where a peer cannot be built (no network, no uv, a
resolution failure) :func:`peer_python` raises :class:`PeerUnavailable` with a one-line reason and the
benchmark prints ``SKIP`` for that peer.

Peers:

* ``torchtune``: torchtune 0.6.1 with torchao 0.10.0 (the torchao it needs; PEFT refuses that torchao,
  hence a separate environment).
* ``hf``: transformers + PEFT + bitsandbytes (QLoRA) + accelerate, at the versions ft's environment has.

API::

    from _peers import PeerUnavailable, peer_python
    try:
        python = peer_python("torchtune")       # Path of the peer env's interpreter (built on first use)
    except PeerUnavailable as e:
        print(f"SKIP torchtune: {e}")

CLI: ``python bench/_peers.py [torchtune hf]`` builds (or checks) the environments and prints their paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PEERS", "PeerUnavailable", "peer_python", "peers_root"]

_MARKER = "ft-peer.json"
_INSTALL_TIMEOUT_S = 1800


class PeerUnavailable(RuntimeError):
    """A peer environment could not be built or does not run; the message is one line."""


def _pinned(name: str) -> str:
    """``name==<version installed here>``, so a peer uses what ft's environment was tested with."""
    return f"{name}=={md.version(name)}"


def _packages(name: str) -> tuple[list[str], str]:
    """(requirements, import check) of a peer."""
    if name == "torchtune":
        return ["torchtune==0.6.1", "torchao==0.10.0"], "import torchtune, torchao"
    if name == "hf":
        reqs = [_pinned(p) for p in ("transformers", "peft", "bitsandbytes", "accelerate", "safetensors")]
        return reqs, "import transformers, peft, bitsandbytes"
    raise PeerUnavailable(f"unknown peer {name!r} (known: {', '.join(PEERS)})")


PEERS: tuple[str, ...] = ("torchtune", "hf")


def _torch_constraints() -> list[str]:
    """Exact pins of torch and the wheels that make up its build (CUDA runtime libraries, Triton)."""
    pins = [_pinned("torch")]
    for dist in md.distributions():
        dname = dist.metadata["Name"]
        if dname and re.match(r"(nvidia-|cuda-|triton$)", dname.lower()):
            pins.append(f"{dname}=={dist.version}")
    return sorted(set(pins))


def peers_root() -> Path:
    """Where peer environments live (``$FT_BENCH_PEERS`` or ``~/.cache/ft-bench/peers``)."""
    return Path(os.environ.get("FT_BENCH_PEERS", Path.home() / ".cache" / "ft-bench" / "peers"))


def _env_dir(name: str) -> Path:
    torch_version = md.version("torch").replace("+", "_")
    return peers_root() / f"{name}-torch{torch_version}"


def _python_in(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two benchmarks started at once must not build the same environment twice.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerUnavailable(f"{what}: {e}") from e
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise PeerUnavailable(f"{what} failed: {tail[-1] if tail else f'exit {proc.returncode}'}")
    return proc.stdout


def _build(name: str, env: Path, spec: dict[str, object]) -> None:
    uv = shutil.which("uv")
    if uv is None:
        raise PeerUnavailable("uv is not on PATH (needed to build peer environments)")
    if env.exists():
        shutil.rmtree(env)
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(env)], f"{name}: uv venv")
    constraints = env / "constraints.txt"
    constraints.write_text("\n".join(spec["constraints"]) + "\n")  # type: ignore[arg-type]
    python = _python_in(env)
    install = [uv, "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints)]
    _run([*install, _pinned("torch"), *spec["requirements"]], f"{name}: uv pip install")  # type: ignore[misc]


def _check(name: str, python: Path, check: str) -> None:
    probe = f"{check}; import importlib.metadata as m; print(m.version('torch'))"
    out = _run([str(python), "-c", probe], f"{name}: import")
    got, want = out.strip().splitlines()[-1], md.version("torch")
    if got != want:
        raise PeerUnavailable(f"{name}: peer env has torch {got}, ft has {want}")


def peer_python(name: str) -> Path:
    """The interpreter of peer ``name``'s environment, built on first use (minutes) and cached.

    Args:
        name: One of :data:`PEERS`.

    Raises:
        PeerUnavailable: The environment cannot be built here or does not import; the message says why.
    """
    requirements, check = _packages(name)
    spec = {"requirements": requirements, "constraints": _torch_constraints(), "check": check}
    env = _env_dir(name)
    python = _python_in(env)
    marker = env / _MARKER
    with _locked(env.parent / f".{env.name}.lock"):
        fresh = marker.is_file() and json.loads(marker.read_text()) == spec and python.exists()
        if not fresh:  # a marker is written only after the import check passed
            _build(name, env, spec)
            _check(name, python, check)
            marker.write_text(json.dumps(spec))
    return python


def main() -> None:
    for name in sys.argv[1:] or PEERS:
        try:
            print(f"{name}: {peer_python(name)}", flush=True)
        except PeerUnavailable as e:
            print(f"SKIP {name}: {e}", flush=True)


if __name__ == "__main__":
    main()
