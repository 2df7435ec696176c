"""The recipes' loggers read back with each tool's own reader: TensorBoard and Weights & Biases (offline).

One full fine-tuning run (`prepare` + `run`, the path of `tune run`) with `loggers: [jsonl, tensorboard,
wandb]`, `WANDB_MODE=offline` (no network) and validation every 2 of 3 steps. TensorBoard's event files
are read with tensorboard's `EventAccumulator`; every scalar series must equal the matching column of
`metrics.jsonl` at the same steps (TensorBoard stores float32). W&B has no public reader for an offline
run (`wandb.Api` needs a server; its `files/` hold no history in offline mode), so the run's
`run-<id>.wandb` log is read as what it is: LevelDB's documented log format (32 KiB blocks of
checksummed, typed fragments) behind a 7-byte W&B header, holding `Record` messages of wandb's shipped
protobuf schema (`wandb.proto.wandb_internal_pb2`); its history rows must equal `metrics.jsonl`.
A logger whose library is missing is refused in one line naming the extra, before anything is written.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_recipe_support import make_tiny

from ft_recipes.errors import MissingExtraError
from ft_recipes.runner import prepare, run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("loggers"))


def _config(tmp_path: Path, model_dir: Path, data: Path, loggers: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"validation: {{dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}, "
        "every_n_steps: 2}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        f"loggers: {loggers}\nwandb: {{project: ft-test, name: tiny-full}}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\nmax_steps: 3\n"
        "optimizer: {lr: 0.01}\n"
    )
    return str(path)


def _jsonl_series(out: Path) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)] from metrics.jsonl (numeric columns except step)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step":
                series.setdefault(key, []).append((record["step"], float(value)))
    return series


def _leveldb_log_records(data: bytes, header: int) -> list[bytes]:
    """Payloads of a LevelDB log (after a ``header``-byte file header): FULL, or FIRST + MIDDLE* + LAST."""
    block, pos, out, pending = 32768, header, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a fragment header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
        else:
            break  # zero-filled remainder
    return out


def _wandb_series(out: Path) -> dict[str, list[tuple[int, float]]]:
    from wandb.proto import wandb_internal_pb2

    (log,) = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    data = log.read_bytes()
    assert data[:4] == b":W&B"  # magic, then a 2-byte identifier and a version byte
    series: dict[str, list[tuple[int, float]]] = {}
    for payload in _leveldb_log_records(data, header=7):
        record = wandb_internal_pb2.Record.FromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if not key.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                series.setdefault(key, []).append(
                    (record.history.step.num, float(json.loads(item.value_json)))
                )
    return series


def test_tensorboard_and_wandb_hold_the_jsonl_metrics(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    model_dir, data = tiny
    run(
        prepare(
            "full_finetune_single_device", _config(tmp_path, model_dir, data, "[jsonl, tensorboard, wandb]")
        )
    )
    out = tmp_path / "out"
    expected = _jsonl_series(out)
    assert [s for s, _ in expected["loss"]] == [1, 2, 3]
    assert [s for s, _ in expected["val_loss"]] == [2, 3]

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert tb.keys() == expected.keys()
    for key, values in expected.items():
        assert [s for s, _ in tb[key]] == [s for s, _ in values], key
        assert all(v == float(np.float32(e)) for (_, v), (_, e) in zip(tb[key], values, strict=True)), key

    wb = _wandb_series(out)
    assert wb.keys() == expected.keys()
    for key, values in expected.items():
        assert [s for s, _ in sorted(wb[key])] == [s for s, _ in values], key
        assert all(
            math.isclose(v, e, rel_tol=1e-12) for (_, v), (_, e) in zip(sorted(wb[key]), values, strict=True)
        )


def test_missing_logger_library_names_the_extra(
    tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, data = tiny
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what an install without the extra sees
    with pytest.raises(
        MissingExtraError,
        match=r"^loggers: 'tensorboard' needs the tensorboard package; "
        r"install ft-recipes\[tensorboard\]$",
    ):
        run(
            prepare("lora_finetune_single_device", _config(tmp_path, model_dir, data, "[jsonl, tensorboard]"))
        )
    assert not (tmp_path / "out").exists()  # refused before the run wrote anything


def test_a_resumed_run_logs_each_step_once(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Steps an earlier run logged after the checkpoint a run resumes from are dropped, not duplicated.

    The first run logs steps 1-3; the second resumes from the step-2 checkpoint and logs step 3 again.
    metrics.jsonl and TensorBoard (through its purge of later steps) then hold steps 1, 2, 3 once; the
    raw event files still carry both step-3 records, so the purge is what removed one.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    model_dir, data = tiny
    cfg = _config(tmp_path, model_dir, data, "[jsonl, tensorboard]")
    keep = ["checkpoint.every_n_steps=2", "checkpoint.keep_last=3"]
    run(prepare("full_finetune_single_device", cfg, keep))
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_3"]
    run(prepare("full_finetune_single_device", cfg, [*keep, f"resume={out / 'checkpoints' / 'step_2'}"]))

    assert [s for s, _ in _jsonl_series(out)["loss"]] == [1, 2, 3]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    raw = [
        event.step
        for path in sorted((out / "tensorboard").iterdir())
        for event in EventFileLoader(str(path)).Load()
        if any(v.tag == "loss" for v in event.summary.value)
    ]
    assert sorted(raw) == [1, 2, 3, 3]
