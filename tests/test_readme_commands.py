"""Every `tune` command of the READMEs works as written (see readme_support for what "works" means).

The commands run in order in one temporary directory, so files an earlier command writes (`tune cp`)
are there for a later one. Files that only a long job or the reader provides are stubbed as empty
directories, each named below with where it comes from; any other missing file fails the check,
because `tune run` refuses missing files (the check passes `--check-files`, where a bare
`tune validate` would only warn). A second test feeds deliberately broken copies of a README command
through the same check and requires each to fail.
"""

from __future__ import annotations

from pathlib import Path

from readme_support import ROOT, ReadmeCommand, check, readme_files, tune_commands

# Paths documented commands expect to exist without a README command that makes them offline.
STUBS = {
    "output/smollm2-135M-lora-demo/base": "README.md's main job (the dequantised base it writes)",
    "output/smollm2-135M-lora-demo/adapter": "README.md's main job (the PEFT adapter it writes)",
    "my_hf_dir": "apps/tune/README.md: the reader's own HF model directory",
    "my_lora": "apps/tune/README.md: the reader's own PEFT adapter",
}
DATE_PROMPT = "prompt=Rewrite this date as YYYY-MM-DD. Reply with the date only: 3 July 1999"


def _commands() -> list[ReadmeCommand]:
    return [c for readme in readme_files() for c in tune_commands(readme)]


def _stub(cwd: Path) -> None:
    for rel in STUBS:
        (cwd / rel).mkdir(parents=True)


def _generate_command() -> ReadmeCommand:
    found = [c for c in tune_commands(ROOT / "README.md") if DATE_PROMPT in c.args]
    assert len(found) == 1, found
    return found[0]


def test_every_readme_command_works_as_written(tmp_path: Path) -> None:
    commands = _commands()
    readmes = {c.readme.relative_to(ROOT).as_posix() for c in commands}
    assert {"README.md", "packages/ft-recipes/README.md", "apps/tune/README.md"} <= readmes, readmes
    assert _generate_command().args[:4] == ("run", "generate", "--config", "smollm2/135M_generate")
    _stub(tmp_path)
    failures, seen = [], set()
    for command in commands:
        if command.args in seen:
            continue  # the same command in two READMEs
        seen.add(command.args)
        problem = check(command, tmp_path)
        if problem is not None:
            failures.append(problem)
    assert not failures, "\n".join(failures)
    assert len(seen) >= 8, seen  # the extractor found the documented commands


# Deliberately broken copies of README.md's generate command -> what the check must report.
BROKEN = [
    (lambda args: [a.replace("adapter=", "adaptr=") for a in args], "did you mean adapter?"),
    # The prompt's text given to keys that are not text: the strict schema refuses each.
    (lambda args: [*args, DATE_PROMPT.replace("prompt=", "max_new_tokens=")], "max_new_tokens: expected int"),
    (lambda args: [*args, "sampling.temperature=3 July 1999"], "sampling.temperature"),
    # A file no command makes and nothing stubs: `tune run` would refuse it.
    (lambda args: [*args, "model.path=output/nowhere"], "output/nowhere: file not found"),
    (lambda args: [a.replace("smollm2/135M_generate", "smollm2/135M_generat") for a in args], "did you mean"),
    (lambda args: [*args[:4], "--nproc", "2", *args[4:]], "does not parse"),
    (lambda args: ["download", "HuggingFaceTB/SmolLM2-135M", "--outdir", "x"], "does not parse"),
]


def test_a_broken_readme_command_fails_the_check(tmp_path: Path) -> None:
    original = _generate_command()
    _stub(tmp_path)
    assert check(original, tmp_path) is None  # the command as documented passes
    for broken, expected in BROKEN:
        copy = ReadmeCommand(original.readme, original.line, tuple(broken(list(original.args))))
        problem = check(copy, tmp_path)
        assert problem is not None, copy
        assert expected in problem, problem
