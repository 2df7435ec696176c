"""Peak memory of loading safetensors, measured in fresh processes.

Contract: peak RSS minus RSS after imports, measured after one forward that touches every weight, is
at most 1.3x the in-memory weight bytes (single file and sharded). A naive loader (allocate the
model, read the whole file, copy in) is measured the same way and must exceed the bound, so the
measurement is shown able to fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PROBE = r"""
import glob, json, sys
import torch
import ft_models
from safetensors.torch import load_file

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

directory, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
base = status("VmRSS:")
if mode == "ft":
    model = ft_models.from_pretrained(directory)
else:  # the naive way: allocate the model, read every file whole, copy in
    config = ft_models.DecoderConfig.from_file(directory + "/config.json")
    model = ft_models.build_llama(config)
    state = {}
    for path in sorted(glob.glob(directory + "/*.safetensors")):
        state.update(load_file(path))
    state = {k: v.clone() for k, v in state.items()}
    model.load_state_dict(state, strict=False)
with torch.no_grad():
    model(torch.arange(8)[None])
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"base": base, "peak": status("VmHWM:"), "weights": weights}))
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cfg = LlamaConfig(
        vocab_size=16001,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=72,
        tie_word_embeddings=False,
    )  # about 99 MB of fp32 weights
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    root = tmp_path_factory.mktemp("memory")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="40MB")
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    return {"single": root / "single", "sharded": root / "sharded"}


def measure(directory: Path, mode: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(directory), mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak"] - r["base"]) / r["weights"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_loading_peak_memory(checkpoints: dict[str, Path], layout: str) -> None:
    ratio = measure(checkpoints[layout], "ft")
    assert ratio <= 1.3, ratio
    naive = measure(checkpoints[layout], "naive")
    assert naive > 1.3, naive
