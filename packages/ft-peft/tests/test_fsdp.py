"""QLoRA under FSDP2: two gloo processes on CPU shard the quantised base and match one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.multiprocessing as mp


@pytest.mark.distributed
@pytest.mark.slow  # two processes each import torch and bitsandbytes: ~30 s on 2 cores
def test_fully_shard_qlora_matches_single_process(tmp_path: Path) -> None:
    import fsdp_worker

    mp.spawn(fsdp_worker.run, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
