"""Results of an lm-eval run written where ft keeps outputs, in lm-eval's own file format.

lm-eval's ``EvaluationTracker`` writes ``<output_path>/<model>/results_<date>.json`` (and
``samples_<task>_<date>.jsonl``), adding its own fields (timings, task hashes, chat template). Letting
the tracker write them into a temporary directory beside the destination and moving each file into
place keeps its format byte for byte, gives stable names (``results.json``, ``samples_<task>.jsonl``),
and means a reader never sees a half-written file: each is copied into place by ft's atomic write.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import ft_dist

__all__ = ["write_results"]


def write_results(tracker: Any, results: dict[str, Any], output_dir: Path, *, log_samples: bool) -> Path:
    """Write ``output_dir/results.json`` (and ``samples_<task>.jsonl`` with ``log_samples``).

    Args:
        tracker: The ``EvaluationTracker`` given to ``simple_evaluate`` (it holds the run's config).
        results: ``simple_evaluate``'s dict; its ``samples`` are written apart, not into the JSON.
        output_dir: Destination directory (created if missing).
        log_samples: Whether the per-document samples are written.

    Raises:
        ExpectedFailure: lm-eval could not write the file (it only logs such failures).
    """
    from ft_recipes.errors import ExpectedFailure

    output_dir.mkdir(parents=True, exist_ok=True)
    aggregated = {k: v for k, v in results.items() if k != "samples"}
    samples = results.get("samples") if log_samples else None
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".lm_eval-") as tmp:
        tracker.output_path = tmp
        tracker.save_results_aggregated(results=aggregated, samples=samples)
        written = sorted(Path(tmp).rglob("results_*.json"))
        if not written:
            raise ExpectedFailure(f"output_dir: {output_dir}: lm-eval could not write its results file")
        moves = [(written[0], output_dir / "results.json")]
        for task in aggregated.get("configs", {}) if samples is not None else ():
            tracker.save_results_samples(task_name=task, samples=samples[task])  # type: ignore[index]
            found = sorted(Path(tmp).rglob(f"samples_{task}_*.jsonl"))
            if found:
                moves.append((found[0], output_dir / f"samples_{task}.jsonl"))
        for source, target in moves:  # ft's one atomic write (fsynced, then renamed into place)
            with open(source, "rb") as f:
                ft_dist.write_atomic(target, partial(shutil.copyfileobj, f))
    return output_dir / "results.json"
