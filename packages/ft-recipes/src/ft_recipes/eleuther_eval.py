"""Recipe ``eleuther_eval``: score a model on lm-evaluation-harness tasks through ft's lm-eval backend.

``tune run eleuther_eval --config smollm2/135M_eleuther_eval`` loads a model (HF directory, GGUF file or
training output, optionally with a PEFT adapter, applied or merged), wraps it in
:class:`ft_recipes.lm_eval_model.FtLM` and runs lm-eval's ``simple_evaluate`` on

- ``tasks``: names lm-eval knows (its registry, which downloads a task's data from the Hugging Face
  hub, or the task YAMLs of ``include_path``, lm-eval's own way of adding local tasks);
- ``local_tasks``: JSONL files in ft's small schema (multiple choice ``prompt``/``choices``/``answer``,
  or generation ``prompt``/``answer``), turned into lm-eval task configs (``ft_recipes._lm_eval_tasks``).

Every task is found and loaded before the model is, so a typo or a bad file is refused in seconds.
The results are written to ``output_dir/results.json`` exactly as lm-eval's CLI writes its
``results_*.json`` (with ``samples_<task>.jsonl`` beside it when ``log_samples``), and printed as
lm-eval's table. :func:`run_lm_eval` is the same evaluation for a model already in memory, e.g. at the
end of a training run (see the package README). Flow: tasks -> model -> evaluate -> write.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ft_recipes._train_config import AttentionName, LocalTask
from ft_recipes.config import Component, NonNegativeInt, PositiveInt, Seed

__all__ = [
    "FILE_KEYS",
    "PROVIDED",
    "Config",
    "LocalTask",
    "TaskSelection",
    "before_run",
    "main",
    "require_lm_eval",
    "run_lm_eval",
    "select_tasks",
]

DISTRIBUTED = False
PROVIDED = {"model": {"dtype", "device"}}
FILE_KEYS = ("model.path", "tokenizer.path", "adapter", "include_path")


@dataclass
class Config:
    """Schema of an ``eleuther_eval`` config (every key checked; counts >= 1 where zero means nothing)."""

    model: Component
    tokenizer: Component
    output_dir: str
    tasks: list[str] = field(default_factory=list)
    local_tasks: list[LocalTask] = field(default_factory=list)
    include_path: str | None = None  # a directory of lm-eval task YAMLs
    adapter: str | None = None
    merge_adapter: bool = False
    limit: PositiveInt | None = None  # documents per task (null: all)
    num_fewshot: NonNegativeInt | None = None  # null: each task's own default
    batch_size: PositiveInt = 16
    max_seq_length: PositiveInt | None = None  # null: the model's max_position_embeddings
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    system_instruction: str | None = None
    log_samples: bool = False
    bootstrap_iters: NonNegativeInt = 100000
    seed: Seed = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    attention: AttentionName = "auto"  # see ft_recipes.training.apply_attention


@dataclass
class TaskSelection:
    """Tasks found and loaded, ready for ``simple_evaluate``: lm-eval's task manager and the top-level
    task / group objects, one entry per requested name or local file (a tag adds its tasks)."""

    manager: Any
    objects: list[Any]


def _load_error(where: str, name: str, exc: Exception) -> Exception:
    """A one-line error for a task lm-eval cannot load (network trouble is an expected failure)."""
    from ft_recipes.errors import ExpectedFailure, UserError

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cls = ExpectedFailure if isinstance(exc, ConnectionError | TimeoutError) else UserError
    return cls(f"{where}: task {name!r} cannot be loaded ({type(exc).__name__}: {first})")


def require_lm_eval(who: str) -> None:
    """Stop with one line when lm-evaluation-harness (the extra ``ft-recipes[lm-eval]``) is missing.

    Raises:
        MissingExtraError: lm-eval cannot be imported.
    """
    from ft_recipes.errors import MissingExtraError

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f"{who} needs lm-evaluation-harness: pip install 'ft-recipes[lm-eval]'"
        ) from None


def select_tasks(
    tasks: Sequence[str] = (),
    local_tasks: Sequence[LocalTask] = (),
    include_path: str | Path | None = None,
    *,
    key: str = "",
) -> TaskSelection:
    """Find and load every task, so nothing about them fails after a model is loaded.

    Args:
        tasks: lm-eval task, group or tag names (or task YAML paths).
        local_tasks: JSONL tasks in ft's schema.
        include_path: A directory of lm-eval task YAMLs.
        key: What the config keys in messages start with (``eval.`` inside a training config).

    Raises:
        UserError: No task, an unknown name, a bad JSONL file or a task lm-eval cannot build.
        ExpectedFailure: A task whose data cannot be downloaded (network).
    """
    from ft_recipes._assets import resolve_path
    from ft_recipes._lm_eval_tasks import local_task_config, resolve_task_names
    from ft_recipes.errors import UserError

    if not tasks and not local_tasks:
        raise UserError(
            f"{key}tasks: no task given (name lm-eval tasks in tasks or JSONL files in local_tasks)"
        )
    names = [t.name for t in local_tasks]
    if len(set(names)) != len(names):
        raise UserError(
            f"{key}local_tasks: the task name {next(n for n in names if names.count(n) > 1)!r} is used twice"
        )
    configs = [
        local_task_config(
            t.name,
            resolve_path(t.data),
            key=f"{key}local_tasks.{i}.data",
            shown=t.data,
            until=t.until,
            max_gen_toks=t.max_gen_toks,
        )
        for i, t in enumerate(local_tasks)
    ]
    manager = resolve_task_names(list(tasks), include_path)
    objects: list[Any] = []
    specs: list[tuple[str, str, Any]] = [(f"{key}tasks.{i}", n, n) for i, n in enumerate(tasks)]
    specs += [(f"{key}local_tasks.{i}", c["task"], c) for i, c in enumerate(configs)]
    for where, name, spec in specs:
        try:
            loaded = manager.load([spec])
        except Exception as exc:  # lm-eval and datasets raise many kinds; each becomes one line
            raise _load_error(where, name, exc) from None
        groups = loaded.get("groups") or {}
        objects.extend([groups[name]] if name in groups else loaded["tasks"].values())
    return TaskSelection(manager, objects)


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    selection: TaskSelection,
    *,
    output_dir: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    max_seq_length: int | None = None,
    apply_chat_template: bool = False,
    fewshot_as_multiturn: bool = False,
    system_instruction: str | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 100000,
    seed: int = 1234,
    model_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a loaded ft model on ``selection`` with lm-eval; print the table, write the results.

    The model is put back in its previous train/eval mode, so a training loop can call this between
    steps or at its end.

    Args:
        model: An ft ``CausalLM`` (LoRA-wrapped or not).
        tokenizer: Its ft-data tokenizer.
        selection: From :func:`select_tasks`.
        output_dir: Where ``results.json`` (and ``samples_<task>.jsonl``) go; None writes nothing.
        limit: Documents per task (None: all).
        num_fewshot: Few-shot examples (None: each task's default).
        batch_size: Rows per forward.
        max_seq_length: Context length (None: the model's ``max_position_embeddings``).
        apply_chat_template: Render prompts with the model's chat template.
        fewshot_as_multiturn: With a chat template, give few-shot examples as turns.
        system_instruction: A system prompt for every request.
        log_samples: Also write every document, request and response.
        bootstrap_iters: Bootstrap resamples for the stderr of non-mean metrics (0: none).
        seed: lm-eval's Python, NumPy, torch and few-shot seeds, and sampled generation's.
        model_args: What the results' ``config.model_args`` records (the model's path, adapter ...).

    Returns:
        lm-eval's results dict (``results``, ``configs``, ``versions``, ``n-shot``, ...).
    """
    import lm_eval
    from lm_eval.utils import make_table

    from ft_recipes.lm_eval_model import FtLM

    was_training = model.training
    lm = FtLM(model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_seq_length, seed=seed)
    tracker = None
    if output_dir is not None:
        from lm_eval.loggers import EvaluationTracker

        tracker = EvaluationTracker()
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            model_args=model_args or {},
            tasks=list(selection.objects),
            task_manager=selection.manager,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,  # recorded in the results' config (the backend already has it)
            device=str(lm.device),
            log_samples=log_samples,
            evaluation_tracker=tracker,
            apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
            system_instruction=system_instruction,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        model.train(was_training)
    assert results is not None  # one process: rank 0
    if tracker is not None and output_dir is not None:
        from ft_recipes._lm_eval_output import write_results

        write_results(tracker, results, Path(output_dir), log_samples=log_samples)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    sys.stdout.flush()
    return dict(results)


def before_run(cfg: Config) -> None:
    """Read the local JSONL tasks before ``tune run`` creates anything, so a bad file leaves no trace."""
    from ft_recipes._assets import resolve_path
    from ft_recipes._lm_eval_tasks import local_task_config

    for i, task in enumerate(cfg.local_tasks):
        local_task_config(task.name, resolve_path(task.data), key=f"local_tasks.{i}.data", shown=task.data)


def main(cfg: Config) -> None:
    """Find and load the tasks, then the model; evaluate, write ``results.json``, print the table."""
    from ft_recipes._setup import load_model_and_tokenizer, pick_device
    from ft_recipes.training import apply_attention, resolve_inference_precision

    require_lm_eval("eleuther_eval")
    selection = select_tasks(cfg.tasks, cfg.local_tasks, cfg.include_path)
    device = pick_device(cfg.device)
    precision = resolve_inference_precision(cfg.precision, device)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, cfg.tokenizer, cfg.adapter, device, precision.dtype
    )
    if cfg.merge_adapter and cfg.adapter is not None:
        import ft_peft

        ft_peft.merge_adapters(model)
    attention = apply_attention(model, cfg.attention, device=device, dtype=precision.dtype, training=False)
    dtype = str(precision.dtype).removeprefix("torch.")
    print(
        f"[eleuther_eval] device={device} dtype={dtype} attention={attention} ({precision.reason})",
        file=sys.stderr,
    )
    model_args = {"pretrained": str(cfg.model.get("path")), "adapter": cfg.adapter, "dtype": dtype}
    run_lm_eval(
        model,
        tokenizer,
        selection,
        output_dir=cfg.output_dir,
        limit=cfg.limit,
        num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size,
        max_seq_length=cfg.max_seq_length,
        apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn,
        system_instruction=cfg.system_instruction,
        log_samples=cfg.log_samples,
        bootstrap_iters=cfg.bootstrap_iters,
        seed=cfg.seed,
        model_args={k: v for k, v in model_args.items() if v is not None},
    )
    print(f"[eleuther_eval] results: {Path(cfg.output_dir) / 'results.json'}", file=sys.stderr)
