"""A failing rank ends every rank quickly, each with one line naming the rank that failed first.

Two real processes per case, started the way torchrun starts them (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` / ``MASTER_PORT`` in the environment, ``init_distributed`` reading them), running
``launch_worker.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("launch_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(
    scenario: str, timeout_s: float, out: Path, *, nodes: int = 1
) -> list[tuple[int, list[str], float]]:
    """Both ranks' (exit code, stderr lines, seconds from the last rank's start to its exit), on one node
    or as two nodes of one process each."""
    out.mkdir()
    port = str(_free_port())
    procs = []
    per_node = 2 // nodes
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank))
        env.update(LOCAL_RANK=str(rank % per_node), LOCAL_WORLD_SIZE=str(per_node), OMP_NUM_THREADS="1")
        cmd = [sys.executable, str(WORKER), scenario, str(timeout_s), str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout_s + 240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"{scenario}: a rank did not exit")
        ended = time.time()
        started = max(float((out / f"started_{r}").read_text()) for r in range(2))
        results.append((proc.returncode, err.splitlines(), ended - started))
    return results


def test_exception_on_one_rank_ends_every_rank_naming_it(tmp_path: Path) -> None:
    results = _launch("raise", 300, tmp_path / "raise")
    for rank, (code, lines, seconds) in enumerate(results):
        assert code == 1, (rank, lines)
        seen = "" if rank == 1 else " (seen on rank 0)"
        assert lines == [f"error: rank 1 of 2 failed: ValueError: bad row 17 on purpose{seen}"]
        assert seconds < 60  # not the 300 s process-group timeout
    # One node: the default mesh shards over both ranks (FSDP).
    for rank in range(2):
        mesh = json.loads((tmp_path / "raise" / f"mesh_{rank}.json").read_text())
        assert mesh == [["dp_shard"], [0, 1]]


def test_without_the_guard_the_peer_cannot_name_the_failing_rank(tmp_path: Path) -> None:
    """Wrong variant: the same failure outside ``abort_on_failure``."""
    (code0, lines0, _), (code1, lines1, _) = _launch("unguarded", 300, tmp_path / "unguarded")
    assert code0 != 0
    assert code1 != 0
    assert any("Traceback" in line for line in lines1)
    assert not any("bad row 17" in line for line in lines0)


def test_stuck_rank_ends_at_the_configured_timeout(tmp_path: Path) -> None:
    results = _launch("stuck", 3, tmp_path / "stuck", nodes=2)
    for rank, (code, lines, seconds) in enumerate(results):
        assert code == 1, (rank, lines)
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: rank 0 of 2 failed: "), lines
        assert "Timed out" in lines[0]
        assert seconds < 3 + 30
    assert results[1][1][0].endswith("(seen on rank 1)")
    # Two nodes of one rank: the default mesh replicates across them (HSDP, one rank per shard group).
    for rank in range(2):
        mesh = json.loads((tmp_path / "stuck" / f"mesh_{rank}.json").read_text())
        assert mesh == [["dp_replicate", "dp_shard"], [[0], [1]]]
