"""One rank of a fault test, started as torchrun would start it (RANK, WORLD_SIZE, MASTER_* in the env).

Usage: ``python launch_worker.py SCENARIO TIMEOUT_S OUT_DIR``. Prints ``error: ...`` and exits 1 on a
:class:`ft_dist.RankFailedError`, as the ``tune`` command line does. Not a test module.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import ft_dist


def main(scenario: str, timeout_s: float, out: Path) -> None:
    launch = ft_dist.init_distributed(timeout_s=timeout_s, device_type="cpu")
    mesh = ft_dist.build_mesh()  # the launch's default: shard within a node, replicate across nodes
    (out / f"mesh_{launch.rank}.json").write_text(json.dumps([mesh.mesh_dim_names, mesh.mesh.tolist()]))
    (out / f"started_{launch.rank}").write_text(str(time.time()))
    guard = contextlib.nullcontext() if scenario == "unguarded" else ft_dist.abort_on_failure()
    try:
        with guard:
            assert ft_dist.global_count(launch.rank + 1) == sum(range(1, launch.world_size + 1))
            if scenario in ("raise", "unguarded") and launch.rank == 1:
                time.sleep(0.5)  # the others are already waiting in the all-reduce below
                raise ValueError("bad row 17 on purpose")
            if scenario == "stuck" and launch.rank == 1:
                # Waits (far longer than the group's timeout) for a message rank 0 never sends.
                work = dist.irecv(torch.zeros(1), src=0)
                assert work is not None
                work.wait(timeout=timedelta(seconds=600))
            dist.all_reduce(torch.ones(3))
            ft_dist.global_count(1)
    except ft_dist.RankFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]))
