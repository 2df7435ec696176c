"""Bad-input corpus, preference data and DPO settings, through real `tune` processes.

Each bad preference row (missing field, empty answer, differing prompts, wrong role, swapped scores) is
refused by `tune data inspect` with one ``error:`` line naming the file and the row; out-of-range DPO
settings by `tune validate`; a loss list mixing reference-free SimPO with DPO by `tune run` before it
writes anything. None of these processes imports torch except the last one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_input_support import assert_refused

import ft_models

GOOD = {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


BAD_ROWS = [
    ({"prompt": "Q?", "chosen": "A."}, ["row 2", "field 'rejected'", "missing"]),
    ({"prompt": "Q?", "chosen": "A.", "rejected": ""}, ["row 2", "field 'rejected'", "empty answer"]),
    (
        {"chosen": [_user("Q?"), _bot("A.")], "rejected": [_user("Another?"), _bot("B.")]},
        ["row 2", "prompts differ"],
    ),
    (
        {"prompt": [_user("Q?")], "chosen": [_bot("A.")], "rejected": [_user("B.")]},
        ["row 2", "field 'rejected'", "'assistant'", "got 'user'"],
    ),
    (
        {
            "prompt": "Q?",
            "chosen": [_user("Q?"), _bot("A.")],
            "rejected": [_user("Q?"), _bot("B.")],
            "score_chosen": 1.0,
            "score_rejected": 9.0,
        },
        ["row 2", "score_chosen"],
    ),
]


def _config(tmp_path: Path, rows: list[dict]) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "dpo.yaml"
    gguf = ft_models.smollm2_gguf_path()
    cfg.write_text(
        "recipe: lora_dpo_single_device\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {gguf}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {data}, use_cache: false}}\n"
    )
    return cfg


@pytest.mark.parametrize(("row", "names"), BAD_ROWS)
def test_bad_preference_row_is_named_by_data_inspect(tmp_path: Path, row: dict, names: list[str]) -> None:
    cfg = _config(tmp_path, [GOOD, row])
    line = assert_refused("data", "inspect", "--config", str(cfg), cwd=tmp_path, names=names)
    assert str(tmp_path / "pairs.jsonl") in line


def test_good_pair_is_shown_by_data_inspect(tmp_path: Path) -> None:
    from bad_input_support import tune

    cfg = _config(tmp_path, [GOOD])
    done = tune("data", "inspect", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "What is 2+2?" in out.splitlines()[1]
    assert "chosen:" in out
    assert "rejected:" in out
    trained = [line for line in out.splitlines() if line.split()[1:2] == ["+"]]
    assert [line.split()[-1] for line in trained] == [
        "'4'",
        "'.'",
        "'<|im_end|>'",
        "'5'",
        "'.'",
        "'<|im_end|>'",
    ]


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("dpo.beta=0", ["dpo.beta: must be greater than 0"]),
        ("dpo.label_smoothing=0.5", ["dpo.label_smoothing: must be in [0, 0.5)"]),
        ("dpo.loss_type=[dpo]", ["dpo.loss_type"]),
        ("dpo.reference=cached", ["dpo.reference"]),
        ("packed=true", ["packed"]),
    ],
)
def test_dpo_settings_out_of_range(tmp_path: Path, override: str, names: list[str]) -> None:
    assert_refused("validate", "smollm2/135M_dpo", override, cwd=tmp_path, names=names)


def test_simpo_mixed_with_dpo_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file\n")
    cfg = _config(tmp_path, [GOOD])
    model = ft_models.smollm2_gguf_path()
    assert_refused(
        "run",
        "lora_dpo_single_device",
        "--config",
        str(cfg),
        f"model={{_component_: from_pretrained, path: {model}}}",
        "output_dir=out2",
        "dpo.loss_type=[simpo,sigmoid]",
        cwd=tmp_path,
        names=["dpo.loss_type", "simpo"],
    )
