"""The `tune` commands the READMEs document, found as a reader copies them, and a check of each.

Commands come from fenced shell blocks (``bash``, ``sh``, ``shell``, ``console`` or no language) of
README.md, packages/*/README.md and apps/*/README.md: ``\\`` continuations joined, comments dropped,
the shell's quoting applied, pipelines split; ``tune ...`` and ``uv run [--flags] tune ...`` count.

:func:`check` runs one as written, through the real command line: ``tune run RECIPE --config C
OVERRIDES`` becomes ``tune validate C OVERRIDES --recipe RECIPE --check-files`` (what ``tune run``
checks before it starts: the same schema, components and files, without training anything);
``validate``, ``cat``, ``ls`` and ``cp`` run as they are; any other subcommand (``download``, ``data
inspect``, ``completion``) is parsed against the click command (it exists, its options are known).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ft_tune.cli import main

__all__ = ["ROOT", "ReadmeCommand", "check", "readme_files", "tune_commands"]

ROOT = Path(__file__).resolve().parents[1]
_SHELL = {"", "bash", "sh", "shell", "console"}
_FENCE = re.compile(r"^\s*```(\S*)")
_RUN_AS_IS = {"validate", "cat", "ls", "cp"}


@dataclass(frozen=True)
class ReadmeCommand:
    """One documented command: where it is written and its words after ``tune``."""

    readme: Path
    line: int
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.readme.relative_to(ROOT)}:{self.line}: tune {shlex.join(self.args)}"


def readme_files(root: Path = ROOT) -> list[Path]:
    """README.md and the README of every package and app."""
    return [
        root / "README.md",
        *sorted(root.glob("packages/*/README.md")),
        *sorted(root.glob("apps/*/README.md")),
    ]


def _shell_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, logical line)`` of the fenced shell blocks, continuations joined."""
    out: list[tuple[int, str]] = []
    in_block, shell, pending, start = False, False, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = _FENCE.match(line)
        if fence:
            in_block, shell = not in_block, fence.group(1).lower() in _SHELL
            continue
        if not (in_block and shell):
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    return out


def _words(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``|``, ``&&``, ``;``), comments dropped."""
    lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for word in lexer:
        if set(word) <= set("|&;"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _after_tune(words: list[str]) -> tuple[str, ...] | None:
    if words[0] == "tune":
        return tuple(words[1:])
    if words[:2] == ["uv", "run"]:
        rest = words[2:]
        while rest and rest[0].startswith("--") and "=" not in rest[0]:
            rest = rest[1:]  # flags without a value: --locked, --frozen, --offline
        if rest and rest[0] == "tune":
            return tuple(rest[1:])
    return None


def tune_commands(readme: Path) -> list[ReadmeCommand]:
    """Every ``tune`` command of a README's shell blocks, in order."""
    found = []
    for number, line in _shell_lines(readme.read_text(encoding="utf-8")):
        if not re.search(r"\btune\b", line):
            continue  # blocks without a language also hold trees and diagrams, not shell
        try:
            commands = _words(line)
        except ValueError as exc:  # unbalanced quotes: a shell would refuse the line too
            raise ValueError(f"{readme.relative_to(ROOT)}:{number}: {exc}: {line}") from None
        for words in commands:
            args = _after_tune(words)
            if args is not None:
                found.append(ReadmeCommand(readme, number, args))
    return found


def _parse(args: tuple[str, ...]) -> tuple[click.Command, dict[str, object]]:
    """The leaf click command ``args`` name and its parsed parameters (click's own errors otherwise)."""
    command: click.Command = main
    ctx = click.Context(main, info_name="tune")
    rest = list(args)
    while isinstance(command, click.Group):
        sub = command.get_command(ctx, rest[0]) if rest else None
        if sub is None:
            raise click.UsageError(f"no such command {rest[:1]}")
        ctx = click.Context(sub, info_name=rest[0], parent=ctx)
        command, rest = sub, rest[1:]
    parsed = command.make_context(ctx.info_name, rest, parent=ctx.parent)
    return command, dict(parsed.params)


def _to_run(args: tuple[str, ...]) -> tuple[str, ...] | None:
    """What to run for a documented command, or None when parsing it is the whole check."""
    command, params = _parse(args)
    if command.name == "run":
        flags = ["--allow-any-component"] if params["allow_any_component"] else []
        return (
            "validate", str(params["config"]), *map(str, params["overrides"]),  # type: ignore[call-overload]
            "--recipe", str(params["recipe"]), "--check-files", *flags,
        )  # fmt: skip
    return args if command.name in _RUN_AS_IS else None


def check(command: ReadmeCommand, cwd: Path, timeout: int = 120) -> str | None:
    """Check one documented command in ``cwd``; None when it works, else what went wrong (one line)."""
    try:
        to_run = _to_run(command.args)
    except click.ClickException as exc:
        return f"{command}: does not parse: {exc.format_message()}"
    if to_run is None:
        return None
    tune = Path(sys.executable).with_name("tune")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("FT_DEBUG", None)
    done = subprocess.run(
        [str(tune), *to_run], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    complaints = [ln for ln in done.stderr.splitlines() if ln.startswith(("error:", "warning:", "Traceback"))]
    if done.returncode != 0 or complaints:
        shown = complaints[0] if complaints else done.stderr.strip()[-300:]
        return f"{command}: `tune {shlex.join(to_run)}` exit {done.returncode}: {shown}"
    return None
