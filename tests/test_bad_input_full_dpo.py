"""Bad-input corpus, ``full_dpo_distributed``'s reference settings, through real `tune` processes.

``tune validate`` refuses an unknown reference mode and a key the recipe does not have (no torch);
``tune run`` refuses, before anything loads or is written, ``precompute_batch_size`` with a live
reference, and a ``precomputed`` resume from a checkpoint that holds no reference table (a ``live``
run's: recomputing the table from its trained weights would change the reference). Each is one
``error:`` line naming the key or the checkpoint; the output dir, its checkpoints and config stay
byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input_support import assert_refused
from dpo_support import make_tiny_dpo

from ft_recipes import full_dpo_distributed as recipe
from ft_recipes.runner import prepare, run


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step ``live`` run (in this process) with its checkpoint and config.yaml."""
    root = tmp_path_factory.mktemp("full_dpo_bad")
    model_dir, pairs = make_tiny_dpo(root)
    (root / "cfg.yaml").write_text(
        "recipe: full_dpo_distributed\n"
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        f"tokenizer: {{_component_: load_tokenizer, path: {model_dir}}}\n"
        f"dataset: {{_component_: build_preference_dataset, source: {pairs}, use_cache: false}}\n"
        f"output_dir: {root / 'out'}\n"
        "dpo: {reference: live}\ndevice: cpu\nprecision: fp32\nbatch_size: 2\nmax_seq_len: 96\n"
        "num_workers: 0\nmax_steps: 1\n"
    )
    run(prepare(recipe, str(root / "cfg.yaml")))
    assert (root / "out/checkpoints/step_1").is_dir()
    return root


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("dpo.reference=frozen", ["dpo.reference"]),
        ("lora.rank=8", ["lora"]),
        ("packed=true", ["packed"]),
    ],
)
def test_full_dpo_settings_refused_by_validate(tmp_path: Path, override: str, names: list[str]) -> None:
    assert_refused("validate", "smollm2/135M_full_dpo", override, cwd=tmp_path, names=names)


def test_precompute_batch_size_with_a_live_reference(live_run: Path) -> None:
    assert_refused(
        "run",
        "full_dpo_distributed",
        "--config",
        str(live_run / "cfg.yaml"),
        f"output_dir={live_run / 'fresh'}",
        "dpo.precompute_batch_size=4",
        cwd=live_run,
        names=["dpo.precompute_batch_size", "dpo.reference=precomputed"],
    )


def test_precomputed_resume_from_a_checkpoint_without_the_table(live_run: Path) -> None:
    assert_refused(
        "run",
        "full_dpo_distributed",
        "--config",
        str(live_run / "cfg.yaml"),
        "resume=auto",
        "max_steps=2",
        "dpo.reference=precomputed",
        cwd=live_run,
        names=[str(live_run / "out/checkpoints/step_1"), "no precomputed reference log-probs"],
    )
