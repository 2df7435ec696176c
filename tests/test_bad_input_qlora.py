"""Bad-input corpus, the GPU-default settings: ``tf32`` and ``lora.quantize``, through real `tune validate`.

Schema errors are refused before any component is imported (no torch), so this module stays in the
default tier. Every case runs in a directory holding a previous run's outputs, which must stay
byte-identical (:func:`assert_refused`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused

CASES = [
    ("smollm2/135M_lora", "tf32=maybe", ["tf32"]),
    ("smollm2/135M_full", "tf32=3", ["tf32"]),
    ("smollm2/135M_qlora", "lora.quantize=nf8", ["lora.quantize", "nf8"]),
    ("smollm2/135M_qlora", "precision=bf16", ["precision", "bf16"]),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5, "peak_memory_mib": 900.0}\n')
    return tmp_path


@pytest.mark.parametrize(("config", "override", "names"), CASES)
def test_validate_refuses(workdir: Path, config: str, override: str, names: list[str]) -> None:
    line = assert_refused("validate", config, override, cwd=workdir, names=names)
    assert f"'{override}'" in line or override.split("=")[0] in line
