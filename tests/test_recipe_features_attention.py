"""The recipes' ``attention`` key: applied in setup, logged, and what the training step really runs.

A tiny Llama with SmolLM2's tokenizer (``test_recipe_support.make_tiny``). Each training recipe is set
up in process with bf16-mixed precision on the CPU; its log line states the setting and, for ``auto``,
what it resolved to; one forward and backward of the set-up model runs under the profiler, which must
see the grouped products for ``auto`` (bf16 CPU training, the documented rule) and the fused SDPA op
for ``sdpa`` (the negative control: the same step with another setting runs another kernel). The
generate recipe logs ``auto -> sdpa`` (no gradients).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
from test_recipe_support import make_tiny
from torch.profiler import ProfilerActivity, profile

from ft_recipes import full_finetune_single_device as full
from ft_recipes import generate
from ft_recipes import lora_finetune_single_device as lora
from ft_recipes.runner import prepare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("attention"))


def _config(out: Path, model_dir: Path, data: Path) -> str:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        f"dataset: {{_component_: build_dataset, source: {data}, use_cache: false}}\n"
        f"output_dir: {out}\ndevice: cpu\nprecision: bf16-mixed\nbatch_size: 2\nmax_seq_len: 96\n"
    )
    return str(path)


def _ran(model: torch.nn.Module, vocab: int) -> str:
    """The attention kernel one training forward and backward runs, as the profiler sees it."""
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(ids).float().sum().backward()
    names = {e.name for e in prof.events()}
    sdpa = any("scaled_dot_product" in n for n in names)
    grouped = "aten::baddbmm" in names
    assert sdpa != grouped, names
    return "sdpa" if sdpa else "grouped"


@pytest.mark.parametrize("recipe", [lora, full], ids=["lora", "full"])
@pytest.mark.parametrize(
    ("attention", "logged", "runs"),
    [
        ("auto", "auto -> grouped for training calls (CPU, bf16, with gradients", "grouped"),
        ("sdpa", "sdpa", "sdpa"),
    ],
    ids=["auto", "sdpa"],
)
def test_training_recipes_apply_log_and_run_the_setting(
    recipe: ModuleType,
    attention: str,
    logged: str,
    runs: str,
    tiny: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, data = tiny
    cfg = prepare(recipe, _config(tmp_path / "out", model_dir, data), [f"attention={attention}"]).config
    run = recipe.setup(cfg)
    tag = "lora" if recipe is lora else "full"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"[{tag}] attention=")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"[{tag}] attention={logged}"), lines
    assert _ran(run.model, run.tokenizer.vocab_size) == runs


def test_generate_logs_what_auto_resolved_to(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, _ = tiny
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"model: {{_component_: from_pretrained, path: {model_dir}}}\n"
        "tokenizer: {_component_: load_tokenizer, path: '${model.path}'}\n"
        "device: cpu\nprecision: bf16\nmax_new_tokens: 3\nprompt: hello\n"
    )
    generate.main(prepare(generate, str(config)).config)
    err = capsys.readouterr().err
    assert re.search(
        r"^\[generate\] device=cpu dtype=bfloat16 attention=auto -> sdpa \(no gradients", err, re.M
    ), err
