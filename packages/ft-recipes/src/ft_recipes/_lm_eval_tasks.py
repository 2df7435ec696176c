"""Which lm-eval tasks a run asks for: names lm-eval knows, a directory of task YAMLs, local JSONL files.

Three sources, checked before a model is loaded so that a typo costs seconds, not a model load:

- a task (or group, or tag) name from lm-eval's registry, or from the task YAMLs of ``include_path``
  (lm-eval's ``TaskManager(include_path=...)``), or the path of one task YAML;
- a local JSONL file in ft's small schema, turned into an lm-eval task config (a dict lm-eval loads
  like a YAML task; nothing is fetched). Its rows reach lm-eval through :func:`load_local_rows` (the
  config's ``custom_dataset``), not through ``dataset_path: json``: the ``datasets`` JSON builder
  (pyarrow) turns every string that looks like an ISO date into a timestamp, so the demo's answer
  ``"2034-08-10"`` became ``"2034-08-10 00:00:00"`` and no generation could match it:

  * multiple choice, one object per line ``{"prompt": str, "choices": [str, ...], "answer": int | str}``
    (``answer``: the index of the right choice or its text, the same kind on every line); scored by
    ``acc`` and ``acc_norm`` over ``log p(" " + choice | prompt)``;
  * generation ``{"prompt": str, "answer": str}``; the model continues the prompt until one of the
    ``until`` strings and the text, stripped, is scored by ``exact_match``.

Indexing lm-eval's own ~15k task YAMLs takes seconds, so names are first looked up among the local
tasks and ``include_path`` alone, and lm-eval's registry is read only for a name not found there.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_local_rows", "local_task_config", "resolve_task_names"]


def _read_rows(path: Path, where: str) -> list[dict[str, Any]]:
    from ft_recipes._jsonl import read_jsonl_objects
    from ft_recipes.errors import UserError

    rows = read_jsonl_objects(path, where)
    if not rows:
        raise UserError(f"{where}: no rows")
    return [dict(row, _line=n) for n, row in rows]


def _check_row(row: dict[str, Any], where: str, multiple_choice: bool, answer_kind: type | None) -> type:
    from ft_recipes.errors import UserError

    at = f"{where}: line {row['_line']}"
    if not isinstance(row.get("prompt"), str):
        raise UserError(f"{at}: expected a string 'prompt'")
    if ("choices" in row) != multiple_choice:
        raise UserError(
            f"{at}: every row of a task needs 'choices' (multiple choice) or none does (generation)"
        )
    answer = row.get("answer")
    if not multiple_choice:
        if not isinstance(answer, str):
            raise UserError(f"{at}: expected a string 'answer'")
        return str
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{at}: 'choices' must be a list of at least two strings")
    if isinstance(answer, bool) or not isinstance(answer, int | str):
        raise UserError(f"{at}: 'answer' must be the index of the right choice or its text")
    if answer_kind is not None and not isinstance(answer, answer_kind):
        raise UserError(f"{at}: 'answer' is {type(answer).__name__} here but {answer_kind.__name__} above")
    if isinstance(answer, int) and not 0 <= answer < len(choices):
        raise UserError(f"{at}: 'answer' {answer} is not an index of its {len(choices)} choices")
    if isinstance(answer, str) and answer not in choices:
        raise UserError(f"{at}: 'answer' {answer!r} is not one of its choices")
    return type(answer)


class _NoMetadataHint(logging.Filter):
    """Drops lm-eval's hint about ``--metadata``, which it logs for every task with a
    ``custom_dataset`` and which means nothing for ft's local tasks (they take no arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


def _quiet_metadata_hint() -> None:
    logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(f, _NoMetadataHint) for f in logger.filters):
        logger.addFilter(_NoMetadataHint())


def load_local_rows(data_files: dict[str, str], **_: Any) -> Any:
    """lm-eval's ``custom_dataset`` for ft's local tasks: each split's JSONL rows, values as written.

    lm-eval calls it with the task's ``metadata`` and ``dataset_kwargs`` (and whatever metadata the run
    adds, ignored here). Rows are read with :mod:`json` and handed to ``datasets.Dataset.from_list``,
    which keeps Python strings as strings.

    Args:
        data_files: Split name -> JSONL path (the config's ``dataset_kwargs``).

    Returns:
        A ``datasets.DatasetDict`` with one split per entry.
    """
    import datasets

    splits = {}
    for split, file in data_files.items():
        rows = _read_rows(Path(file), file)
        splits[split] = datasets.Dataset.from_list(
            [{k: v for k, v in r.items() if k != "_line"} for r in rows]
        )
    return datasets.DatasetDict(splits)


def local_task_config(
    name: str,
    data: str | Path,
    *,
    key: str = "local_tasks",
    shown: str | None = None,
    until: Sequence[str] = ("\n",),
    max_gen_toks: int = 64,
) -> dict[str, Any]:
    """An lm-eval task config (what a task YAML holds) for a JSONL file in ft's schema.

    Args:
        name: The task's name in the results.
        data: The JSONL file (read and checked here; lm-eval reads it again through ``datasets``).
        key: The config key that named the file, which every message starts with.
        shown: The file as the user wrote it, for messages (default ``data``).
        until: Generation tasks: stop strings.
        max_gen_toks: Generation tasks: most new tokens.

    Raises:
        MissingFileError: The file does not exist or is not UTF-8.
        UserError: A row that is not JSON or breaks the schema (the message names the line).
    """
    _quiet_metadata_hint()
    path = Path(data).expanduser().resolve()
    where = f"{key}: {shown if shown is not None else data}"
    rows = _read_rows(path, where)
    multiple_choice = "choices" in rows[0]
    kind: type | None = None
    for row in rows:
        kind = _check_row(row, where, multiple_choice, kind)
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",  # required by lm-eval's schema; custom_dataset is what loads the rows
        "custom_dataset": load_local_rows,
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "doc_to_text": "prompt",
        "doc_to_target": "answer",
        "metadata": {"version": 1.0, "source": str(path)},
    }
    if multiple_choice:
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": "choices",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    else:
        config |= {
            "output_type": "generate_until",
            "generation_kwargs": {
                "until": list(until),
                "max_gen_toks": int(max_gen_toks),
                "do_sample": False,
            },
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "regexes_to_ignore": [r"^\s+", r"\s+$"],
                }
            ],
        }
    return config


def _known(manager: Any, name: str) -> bool:
    return name in manager.all_tasks or (Path(name).suffix in (".yaml", ".yml") and Path(name).is_file())


def resolve_task_names(names: Sequence[str], include_path: str | Path | None, key: str = "tasks") -> Any:
    """lm-eval's ``TaskManager`` that knows every name in ``names`` (only ``include_path`` when it has them all).

    Args:
        names: Task, group or tag names, or task YAML paths.
        include_path: A directory of task YAMLs (searched first), or None.
        key: The config key of the list, for messages (``tasks.2: ...``).

    Raises:
        MissingFileError: ``include_path`` does not exist.
        UserError: A name neither lm-eval nor ``include_path`` defines (with the closest one).
    """
    from lm_eval.tasks import TaskManager

    from ft_recipes.errors import MissingFileError, UserError

    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise MissingFileError(f"include_path: {include_path}: no such directory")
    include = str(Path(include_path).expanduser()) if include_path is not None else None
    if include is not None:
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(_known(manager, n) for n in names):
            return manager
    manager = TaskManager(include_path=include)
    for i, name in enumerate(names):
        if not _known(manager, name):
            close = difflib.get_close_matches(name, manager.all_tasks, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f" or {include_path}" if include_path is not None else ""
            raise UserError(f"{key}.{i}: unknown task {name!r} (not in lm-eval's tasks{where}){hint}")
    return manager
