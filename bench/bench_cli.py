"""Wall time of `tune --help` and `tune ls` (median of 5 fresh processes), against torchtune's `tune --help`.

torchtune 0.6.1 is measured when its `tune` script is given (`--torchtune PATH` or $TORCHTUNE_TUNE);
a throwaway environment for it:

    uv venv /tmp/ttvenv && VIRTUAL_ENV=/tmp/ttvenv uv pip install torchtune==0.6.1 torchao==0.10.0

Prints one JSON line (`median_s` is ft's `tune --help`; the target is at most a tenth of torchtune's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _median(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache once
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--torchtune", default=os.environ.get("TORCHTUNE_TUNE"), help="torchtune's `tune` script")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    script = Path(sys.executable).with_name("tune")
    tune = str(script) if script.exists() else shutil.which("tune") or "tune"
    result: dict[str, object] = {
        "lib": "ft",
        "workload": "cli-start",
        "median_s": _median([tune, "--help"], args.runs),
        "ls_median_s": _median([tune, "ls"], args.runs),
        "torch": "n/a",
    }
    if args.torchtune:
        peer = _median([args.torchtune, "--help"], args.runs)
        result["torchtune_0.6.1_median_s"] = peer
        result["ft_over_torchtune"] = round(float(result["median_s"]) / peer, 3)  # type: ignore[arg-type]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
