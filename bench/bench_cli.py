"""Wall time of `tune --help` (median of 5 runs in fresh processes); prints one JSON line."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

script = Path(sys.executable).with_name("tune")
tune = str(script) if script.exists() else shutil.which("tune") or "tune"
times = []
for _ in range(5):
    t = time.perf_counter()
    subprocess.run([tune, "--help"], check=True, capture_output=True)
    times.append(time.perf_counter() - t)
print(
    json.dumps(
        {"lib": "ft", "workload": "cli-start", "median_s": round(statistics.median(times), 3), "torch": "n/a"}
    )
)
