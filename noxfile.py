"""Every check of the workspace, each in its own environment synced from the one lock.

`tests` syncs a single member with its own `test` group into a fresh environment
(`uv sync --locked --package NAME --group test`), so an import that the member does not
declare fails here and not at a user's site. ARCHITECTURE.md describes the packages and the
dependency edges these sessions check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# One compile cache for the whole run: every session shares compiled kernels.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="ft-inductor-"))

MEMBERS = {
    "ft-models": "packages/ft-models",
    "ft-peft": "packages/ft-peft",
    "ft-dist": "packages/ft-dist",
    "ft-data": "packages/ft-data",
    "ft-recipes": "packages/ft-recipes",
    "ft-tune": "apps/tune",
}


def _has_tests(path: str) -> bool:
    return any((ROOT / path / "tests").glob("**/test_*.py"))


# A member with no tests yet is left out: pytest's "no tests collected" is a failure.
TESTED = [name for name, path in MEMBERS.items() if _has_tests(path)]


def _sync(session: nox.Session, *args: str) -> None:
    session.run_install(
        "uv",
        "sync",
        "--locked",
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


# Test processes per session (pytest-xdist). A file's tests stay in one process, so a module's fixtures
# are built once, and files are handed out in collection order (tests/conftest.py puts the long ones
# first); most tests wait on subprocesses or run on one thread, so two processes share two cores well.
# FT_TEST_WORKERS=1 runs everything in one process, in order.
# Each process, and what a test starts, gets its share of the cores as torch threads: more threads
# than cores make OpenMP's waiting threads spin against each other.
WORKERS = os.environ.get("FT_TEST_WORKERS") or str(min(os.cpu_count() or 1, 4))
THREADS = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // int(WORKERS)))


def _pytest(session: nox.Session, *args: str) -> None:
    xdist = ["-n", WORKERS, "--dist", "loadfile", "--no-loadscope-reorder"]
    session.run("pytest", *xdist, *args, *session.posargs, env={"OMP_NUM_THREADS": THREADS})


@nox.session
@nox.parametrize("package", TESTED, ids=TESTED)
def tests(session: nox.Session, package: str) -> None:
    """Default (not slow) tests of one member, in an env holding only that member."""
    _sync(session, "--package", package, "--group", "test")
    _pytest(session, f"{MEMBERS[package]}/tests", "-m", "not slow")


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests in tests/ (an ft model with PEFT, packed batches through a model)."""
    _sync(session, "--all-packages", "--group", "integration")
    if _has_tests("."):
        _pytest(session, "tests", "-m", "not slow")


@nox.session
def slow(session: nox.Session) -> None:
    """Heavy tests of every member and of tests/ (real models, wheel builds, subprocess runs)."""
    # Every member's test group: the slow tests of each package need its references.
    _sync(session, "--all-packages", "--all-groups")
    paths = [f"{MEMBERS[name]}/tests" for name in TESTED]
    if _has_tests("."):
        paths.append("tests")
    _pytest(session, *paths, "-m", "slow")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format) and the package dependency DAG of DESIGN.md."""
    _sync(session, "--only-group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "tools/check_dag.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every member's sources."""
    _sync(session, "--all-packages", "--group", "dev")
    session.run("mypy", *[f"{path}/src" for path in MEMBERS.values()])


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the peers; prints ratios (never asserted in tests)."""
    _sync(session, "--all-packages", "--group", "dev")
    session.run("python", "bench/run.py", *session.posargs)
