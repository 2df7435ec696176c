"""The distributed recipes through real ``tune run --nproc-per-node 2`` launches (gloo on CPU).

One process reading batches of 2 and two ranks reading batches of 1 see the same global batches
(rank r reads rows r of each global step), so their final weights agree within fp32 summation order.
A deliberately wrong variant, each rank dividing its loss by its own trained tokens, is shown to
differ by far more. A two-rank run resumed from its intermediate (sharded) checkpoint, writing its
checkpoints in the background (``checkpoint.async_save``), ends with bit-identical weights, and its
export equals byte for byte what one process writes from the same weights (its checkpoint loaded at
world size 1). Each torch process costs seconds to start here: the checks share launches.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dpo_support import make_tiny_dpo
from safetensors.torch import load_file
from test_recipe_support import make_tiny

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.long]

TOL = 1e-4  # fp32 summation order over 3 AdamW steps (observed ~1e-5)

# Per-rank normalisation: each rank divides by its own trained tokens (the accumulation bug, across
# ranks). The recipe itself, with ft_dist.global_count replaced by the identity.
WRONG = """
import ft_dist

ft_dist.global_count = lambda count, **_: int(count)

from ft_recipes.{module} import *  # noqa: E402,F403
from ft_recipes.{module} import Config, main, before_run, PROVIDED, FILE_KEYS  # noqa: E402

DISTRIBUTED = True
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    model, data = make_tiny(root)
    (root / "base.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        "output_dir: out\noptimizer: {lr: 0.01}\nlr_schedule: {kind: constant}\n"
        "checkpoint: {every_n_steps: 2, keep_last: 3}\n"
        "device: cpu\nprecision: fp32\nbatch_size: 1\nmax_seq_len: 128\npacked: false\nshuffle: true\n"
        "gradient_accumulation_steps: 2\nepochs: 3\nmax_steps: 3\nseed: 3\n"
    )
    (root / "lora.yaml").write_text(
        (root / "base.yaml").read_text()
        + "lora: {target_modules: [q_proj, v_proj, up_proj], rank: 4, alpha: 8}\nmerge: true\n"
    )
    (root / "wrong_full.py").write_text(WRONG.format(module="full_finetune_single_device"))
    (root / "wrong_dpo.py").write_text(WRONG.format(module="lora_dpo_single_device"))
    (root / "wrong_full_dpo.py").write_text(WRONG.format(module="full_dpo_distributed"))
    _, pairs = make_tiny_dpo(root / "dpo")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    more = [{**r, "prompt": f"{r['prompt']} (variant {k})"} for k in range(1) for r in rows]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + more))  # 12 pairs
    model = root / "dpo" / "model"
    (root / "dpo.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {root / 'pairs.jsonl'}, use_cache: false}}\n"
        "output_dir: out\nlora: {target_modules: [q_proj, v_proj, up_proj], rank: 4, alpha: 8}\n"
        "dpo: {loss_type: [sigmoid], beta: 0.2}\noptimizer: {lr: 0.02}\nlr_schedule: {kind: constant}\n"
        "device: cpu\nprecision: fp32\nmax_seq_len: 96\nshuffle: true\nepochs: 3\nmax_steps: 3\nseed: 5\n"
    )
    (root / "full_dpo.yaml").write_text(
        f"model: {{_component_: from_pretrained, path: {model}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {root / 'pairs.jsonl'}, use_cache: false}}\n"
        "output_dir: out\ndpo: {loss_type: [sigmoid], beta: 0.2}\noptimizer: {lr: 0.002}\n"
        "lr_schedule: {kind: constant}\ndevice: cpu\nprecision: fp32\nmax_seq_len: 96\nshuffle: true\n"
        "num_workers: 0\nepochs: 3\nmax_steps: 3\nseed: 5\n"
    )
    return root


def _tune(root: Path, recipe: str, config: str, *overrides: str, nproc: int = 1) -> str:
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = [str(Path(sys.executable).parent / "tune"), "run", *launch, recipe, "--config", str(root / config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _assert_said_once(stderr: str, *tags: str) -> None:
    """Every progress line (``[data] ...``, ``[full] ...``) of a run is printed by rank 0 alone: each
    appears exactly once, and the setup's own lines are among them."""
    lines = [line.strip() for line in stderr.splitlines() if line.startswith("[")]
    for tag in tags:
        assert any(line.startswith(f"[{tag}]") for line in lines), (tag, stderr[-3000:])
    repeated = {line for line in lines if lines.count(line) > 1}
    assert not repeated, repeated


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_full_two_ranks_equal_one_process_and_resume_bit_exact(root: Path) -> None:
    _tune(root, "full_finetune_single_device", "base.yaml", "output_dir=one", "batch_size=2")
    said = _tune(root, "full_finetune_distributed", "base.yaml", "output_dir=two", nproc=2)
    _assert_said_once(said, "data", "full")
    assert sum("[full] device=" in line for line in said.splitlines()) == 1
    one = load_file(root / "one/model/model.safetensors")
    two = load_file(root / "two/model/model.safetensors")
    base = load_file(root / "model/model.safetensors")
    assert _max_diff(one, two) < TOL
    assert _max_diff(one, {k: base[k] for k in one}) > 100 * TOL  # training moved the weights
    # Intermediate checkpoints are sharded: every rank wrote its own DCP file, nothing was gathered.
    assert sorted(p.name for p in (root / "two/checkpoints/step_2").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    # Export: one process loading the 2-rank run's last (sharded) checkpoint, at world size 1, writes
    # byte-identical files to the ones the 2 ranks gathered and rank 0 wrote; other weights do not.
    step_3 = root / "two/checkpoints/step_3"
    _tune(
        root,
        "full_finetune_single_device",
        "base.yaml",
        "output_dir=export",
        "batch_size=2",
        f"resume={step_3}",
    )
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (root / "export/model" / name).read_bytes() == (root / "two/model" / name).read_bytes(), name
    assert (root / "one/model/model.safetensors").read_bytes() != (
        root / "two/model/model.safetensors"
    ).read_bytes()
    # The wrong normaliser is visible in the weights (AdamW hides a constant factor, not a per-rank one).
    _tune(root, "wrong_full.py", "base.yaml", "output_dir=wrong", nproc=2)
    assert _max_diff(one, load_file(root / "wrong/model/model.safetensors")) > 10 * TOL
    # Resume at the same world size from step 2: bit-identical final weights and files.
    shutil.rmtree(root / "two/checkpoints/step_3")
    saved = (root / "two/model/model.safetensors").read_bytes()
    shutil.rmtree(root / "two/model")
    # The resumed run writes its checkpoints in the background (checkpoint.async_save): the same bytes,
    # and its last checkpoint published, sharded, before the export.
    _tune(
        root,
        "full_finetune_distributed",
        "base.yaml",
        "output_dir=two",
        "resume=auto",
        "checkpoint.async_save=true",
        nproc=2,
    )
    assert (root / "two/model/model.safetensors").read_bytes() == saved
    assert sorted(p.name for p in (root / "two/checkpoints/step_3").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert not list((root / "two/checkpoints").glob(".tmp-*"))


def test_lora_two_ranks_equal_one_process(root: Path) -> None:
    _tune(root, "lora_finetune_single_device", "lora.yaml", "output_dir=lone", "batch_size=2")
    said = _tune(root, "lora_finetune_distributed", "lora.yaml", "output_dir=ltwo", nproc=2)
    _assert_said_once(said, "data", "lora")
    assert sum("[lora] adapter:" in line for line in said.splitlines()) == 1
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        one, two = load_file(root / "lone" / name), load_file(root / "ltwo" / name)
        assert _max_diff(one, two) < TOL, name
    adapter = load_file(root / "lone/adapter/adapter_model.safetensors")
    b = [v for k, v in adapter.items() if "lora_B" in k]
    assert max(float(t.abs().max()) for t in b) > 100 * TOL  # B starts at zero: the adapter trained


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_pairs_normalised_over_ranks(root: Path) -> None:
    """4 pairs x 1 micro-batch = 2 x 2 accumulation = 2 ranks x 2 pairs: the same loss per step (within
    1e-6) and the same adapter; each rank dividing by its own pairs is shown to log another loss."""
    _tune(root, "lora_dpo_single_device", "dpo.yaml", "output_dir=d41", "batch_size=4")
    _tune(
        root,
        "lora_dpo_single_device",
        "dpo.yaml",
        "output_dir=d22",
        "batch_size=2",
        "gradient_accumulation_steps=2",
    )
    said = _tune(root, "lora_dpo_distributed", "dpo.yaml", "output_dir=dr2", "batch_size=2", nproc=2)
    _assert_said_once(said, "data", "lora")
    reference = _losses(root / "d41")
    assert len(reference) == 3
    for out in ("d22", "dr2"):
        assert max(abs(a - b) for a, b in zip(_losses(root / out), reference, strict=True)) < 1e-6, out
    name = "adapter/adapter_model.safetensors"
    one = load_file(root / "d41" / name)
    assert _max_diff(one, load_file(root / "dr2" / name)) < TOL
    assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 100 * TOL  # it trained
    _tune(root, "wrong_dpo.py", "dpo.yaml", "output_dir=dwrong", "batch_size=2", nproc=2)
    assert abs(_losses(root / "dwrong")[0] - reference[0]) > 0.1 * abs(reference[0])


def test_full_dpo_two_ranks_equal_one_process(root: Path) -> None:
    """Full DPO, 2 ranks x 1 pair (sharded policy; the precomputed table dealt out over the ranks and
    summed) = 1 process x 2 pairs with a live frozen copy (in this process): the same losses and
    weights within 1e-5. Each rank dividing by its own pairs (with a sharded live copy) logs another
    loss from step 1 on, while its rewards still start at 0 (the sharded copy is the policy at step 0)."""
    from ft_recipes import full_dpo_distributed
    from ft_recipes.runner import prepare, run

    overrides = ["output_dir=" + str(root / "fd1"), "batch_size=2", "dpo.reference=live"]
    run(prepare(full_dpo_distributed, str(root / "full_dpo.yaml"), overrides))
    _tune(
        root,
        "full_dpo_distributed",
        "full_dpo.yaml",
        "output_dir=fd2",
        "batch_size=1",
        "dpo.reference=precomputed",
        nproc=2,
    )
    reference = _losses(root / "fd1")
    assert abs(reference[0] - math.log(2)) < 1e-6
    assert max(abs(a - b) for a, b in zip(_losses(root / "fd2"), reference, strict=True)) < 1e-5
    one = load_file(root / "fd1/model/model.safetensors")
    assert _max_diff(one, load_file(root / "fd2/model/model.safetensors")) < 1e-5
    base = load_file(root / "dpo/model/model.safetensors")
    assert _max_diff(one, {k: base[k] for k in one}) > 100 * 1e-5  # it trained
    _tune(root, "wrong_full_dpo.py", "full_dpo.yaml", "output_dir=fdw", "batch_size=1", nproc=2)
    assert abs(_losses(root / "fdw")[0] - reference[0]) > 0.1 * abs(reference[0])
    first = json.loads((root / "fdw/metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margins"] == 0.0
