"""A seeded task dataset for the offline demo: normalise dates written in many forms to ``YYYY-MM-DD``.

``python -m ft_recipes.date_data OUT_DIR [--seed 0] [--train 1200] [--eval 60]`` writes
``date_train.jsonl`` (chat rows) and ``date_eval.jsonl`` (prompt/answer items for ``ft_recipes.eval``).
Held-out dates are disjoint from the training dates. Surface forms are unambiguous (month names, or
year-first numbers), so every prompt has exactly one right answer. The ``dataset`` component
:func:`build_date_dataset` writes the files (deterministic for a seed) and tokenises the training set,
so a config needs no file that is not in the project.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

__all__ = ["INSTRUCTION", "build_date_dataset", "make_items", "write_files"]

INSTRUCTION = "Rewrite this date as YYYY-MM-DD. Reply with the date only: "
_MONTHS = [dt.date(2000, m, 1).strftime("%B") for m in range(1, 13)]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _surface(d: dt.date, rng: random.Random) -> str:
    month, short = _MONTHS[d.month - 1], _MONTHS[d.month - 1][:3]
    forms = [
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{short} {d.day} {d.year}",
        f"{d.day}-{short}-{d.year}",
        f"the {_ordinal(d.day)} of {month}, {d.year}",
        f"{d.strftime('%A')}, {month} {d.day}, {d.year}",
        f"{d.year}/{d.month}/{d.day}",
        f"{d.year}.{d.month:02d}.{d.day:02d}",
        f"{month.lower()} {_ordinal(d.day)} {d.year}",
        f"{short.upper()} {d.day:02d} {d.year}",
    ]
    return rng.choice(forms)


def make_items(seed: int, n_train: int, n_eval: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) prompt/answer items; no date appears in both."""
    rng = random.Random(seed)
    start, span = dt.date(1950, 1, 1), (dt.date(2049, 12, 31) - dt.date(1950, 1, 1)).days
    dates: list[dt.date] = []
    seen: set[dt.date] = set()
    while len(dates) < n_train + n_eval:
        d = start + dt.timedelta(days=rng.randrange(span + 1))
        if d not in seen:
            seen.add(d)
            dates.append(d)
    items = [{"prompt": INSTRUCTION + _surface(d, rng), "answer": d.isoformat()} for d in dates]
    return items[:n_train], items[n_train:]


def write_files(
    directory: str | Path, seed: int = 0, n_train: int = 1200, n_eval: int = 60
) -> tuple[Path, Path]:
    """Write ``date_train.jsonl`` (chat rows) and ``date_eval.jsonl`` (items); returns both paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = make_items(seed, n_train, n_eval)
    chats = [
        {
            "messages": [
                {"role": "user", "content": t["prompt"]},
                {"role": "assistant", "content": t["answer"]},
            ]
        }
        for t in train
    ]
    train_path, eval_path = out / "date_train.jsonl", out / "date_eval.jsonl"
    train_path.write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    eval_path.write_text("".join(json.dumps(t) + "\n" for t in held_out), encoding="utf-8")
    return train_path, eval_path


def build_date_dataset(
    *, tokenizer: Any, max_seq_len: int, directory: str, seed: int = 0, n_train: int = 1200, n_eval: int = 60
) -> Any:
    """``dataset`` component: write the files into ``directory`` and tokenise the training chats."""
    import ft_data

    train_path, _ = write_files(directory, seed, n_train, n_eval)
    return ft_data.build_dataset(train_path, tokenizer=tokenizer, max_seq_len=max_seq_len)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--eval", type=int, default=60)
    args = parser.parse_args()
    for path in write_files(args.out_dir, args.seed, args.train, args.eval):
        print(path)


if __name__ == "__main__":
    _main()
