"""QLoRA under FSDP2: two gloo processes on CPU shard the quantised base and match one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

# FSDP2 shards non-floating parameters (the packed uint8 weight) since pytorch/pytorch#177948;
# torch 2.11's fully_shard raises "only Tensors of floating point dtype can require gradients".
_TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


@pytest.mark.skipif(_TORCH < (2, 12), reason="fully_shard of non-floating parameters needs torch >= 2.12")
@pytest.mark.distributed
@pytest.mark.slow  # two processes each import torch and bitsandbytes: ~30 s on 2 cores
def test_fully_shard_qlora_matches_single_process(tmp_path: Path) -> None:
    import fsdp_worker

    mp.spawn(fsdp_worker.run, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
