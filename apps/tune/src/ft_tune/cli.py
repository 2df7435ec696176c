"""The `tune` command.

Start-up stays fast: this module imports only click and the standard library. Anything heavy
(torch, the recipes, huggingface_hub) is imported inside the command callbacks that need it; `tune ls`
reads the recipe registry, which is plain metadata.

Errors: a bad input (config, override, path, name) prints one line on stderr and exits with 2; an
expected failure (network, gated repository, disk) exits with 1; the traceback is shown only with
`--debug` (or FT_DEBUG=1).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ft_tune import __version__

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_OVERRIDES_HELP = (
    "OVERRIDES are key=value, ~key (delete) or key=NAME (swap a component); a value for a text key "
    "(a prompt, a path) is the text as written, any other value is YAML (lr=1e-4, dims=[1,2])."
)


def _exit_code(exc: BaseException) -> int | None:
    """2 for bad input, 1 for an expected failure, None for a bug (re-raised)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and type(exc).__module__.startswith("ft_recipes"):
        return code
    module = type(exc).__module__
    if module.startswith(("ft_models", "ft_data", "ft_peft", "ft_dist")):
        return 2  # the libraries raise on unreadable or inconsistent input files
    if isinstance(exc, OSError):
        return 1
    return None


def _fail(exc: BaseException, code: int) -> NoReturn:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not _to_launcher(message):
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _to_launcher(message: str) -> bool:
    """Under ``tune run --nproc-per-node``, hand the error line to the launcher; False elsewhere.

    Every rank usually meets the same bad input (or the same ``RankFailedError``): printed by each,
    the one problem would fill N lines. The rank writes it to torchrun's per-worker error file instead,
    and the launcher prints the first failing rank's line once.
    """
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if os.environ.get("FT_TUNE_WORKER") != "1" or not error_file:
        return False
    import json
    import time

    try:
        Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))
    except OSError:
        return False
    return True


class _Group(click.Group):
    """Maps ft's typed errors to one line on stderr and an exit status (traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            code = _exit_code(exc)
            if code is None or _debug(ctx):
                raise
            _fail(exc, code)


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("FT_DEBUG") == "1"


@click.group(cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="tune")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """ft: fine-tune and run open LLMs with plain PyTorch.

    \b
    Start with:
      tune ls                                   recipes and their shipped configs
      tune cat smollm2/135M_generate            a config, resolved
      tune run generate --config smollm2/135M_generate prompt="Hello"
    """
    ctx.obj = {"debug": debug}


@main.command("ls")
def ls_cmd() -> None:
    """List recipes, their shipped configs and whether they run distributed."""
    from ft_recipes.registry import RECIPES, shipped_configs

    shipped = shipped_configs()
    rows = [("RECIPE", "CONFIG", "DISTRIBUTED")]
    for info in RECIPES.values():
        names = [c for c in info.configs if c in shipped] or ["-"]
        for i, name in enumerate(names):
            rows.append(
                (info.name if i == 0 else "", name, ("yes" if info.distributed else "no") if i == 0 else "")
            )
    width = max(len(r[0]) for r in rows) + 2
    cwidth = max(len(r[1]) for r in rows) + 2
    for r in rows:
        click.echo(f"{r[0]:<{width}}{r[1]:<{cwidth}}{r[2]}".rstrip())


@main.command("cp")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def cp_cmd(name: str, dest: Path, force: bool) -> None:
    """Copy a recipe (NAME: a recipe) or a shipped config (NAME: family/size_method) to DEST.

    The copies run as they are: tune run ./my_generate.py --config ./my_generate.yaml
    """
    from ft_recipes.errors import UserError
    from ft_recipes.registry import RECIPES, find_config

    if name in RECIPES:
        source, suffix = RECIPES[name].file, ".py"
    else:
        source, suffix = find_config(name), ".yaml"
    target = dest / f"{Path(name).name}{suffix}" if dest.is_dir() else dest
    if target.suffix == "":
        target = target.with_suffix(suffix)
    if target.exists() and not force:
        raise UserError(f"{target}: already exists; pass --force to overwrite")
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: directory does not exist")
    shutil.copyfile(source, target)
    click.echo(f"copied {name} to {target}")


@main.command("cat", epilog=_OVERRIDES_HELP)
@click.argument("config")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def cat_cmd(config: str, overrides: tuple[str, ...]) -> None:
    """Print CONFIG (a shipped name or a YAML path) with overrides and interpolation applied."""
    from ft_recipes.config import to_yaml
    from ft_recipes.runner import load_recipe_config

    click.echo(to_yaml(load_recipe_config(config, overrides)), nl=False)


_allow_any = click.option(
    "--allow-any-component", is_flag=True, help="Allow _component_ paths outside ft, torch and bitsandbytes."
)


@main.command("validate", epilog=_OVERRIDES_HELP)
@click.argument("config")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--recipe", default="", help="Recipe name or .py file (default: the config's `recipe:` key).")
@click.option(
    "--check-files", is_flag=True, help="Missing checkpoint/tokenizer files are errors, not warnings."
)
@_allow_any
def validate_cmd(
    config: str, overrides: tuple[str, ...], recipe: str, check_files: bool, allow_any_component: bool
) -> None:
    """Check CONFIG against its recipe's schema and components' signatures, building nothing."""
    from ft_recipes.runner import prepare

    prepared = prepare(recipe, config, overrides, allow_any=allow_any_component, check_files=check_files)
    for warning in prepared.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config}: valid")


_DIST_FLAGS = (
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "rdzv_backend",
    "rdzv_endpoint",
    "rdzv_id",
    "master_addr",
    "master_port",
    "max_restarts",
)


@main.command("run", epilog=_OVERRIDES_HELP, context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.option("--config", "-c", "config", required=True, help="Shipped config name or YAML path.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--nproc-per-node", default=None, help="Processes per node (hands the run to torchrun).")
@click.option("--nnodes", default=None, help="Nodes, or MIN:MAX (torchrun).")
@click.option("--node-rank", default=None, type=int, help="This node's rank (torchrun, static rendezvous).")
@click.option("--rdzv-backend", default=None, help="Rendezvous backend, e.g. c10d (torchrun).")
@click.option("--rdzv-endpoint", default=None, help="Rendezvous HOST:PORT (torchrun).")
@click.option("--rdzv-id", default=None, help="Rendezvous job id (torchrun).")
@click.option("--master-addr", default=None, help="Rank 0's host, static rendezvous (torchrun).")
@click.option("--master-port", default=None, type=int, help="Rank 0's port, static rendezvous (torchrun).")
@click.option(
    "--max-restarts", default=None, type=int, help="Restart the workers this often on a failure (torchrun)."
)
@_allow_any
def run_cmd(
    recipe: str, config: str, overrides: tuple[str, ...], allow_any_component: bool, **dist: Any
) -> None:
    """Run RECIPE (a registered name or a .py file) with CONFIG and OVERRIDES."""
    from ft_recipes.errors import UserError
    from ft_recipes.registry import RECIPES
    from ft_recipes.runner import load_recipe, prepare, run

    given = {k: v for k, v in dist.items() if v is not None}
    if os.environ.get("FT_TUNE_WORKER") == "1":
        given = {}  # already under torchrun
    if given and recipe in RECIPES and not RECIPES[recipe].distributed:  # refused before importing torch
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"recipe {recipe!r} runs on a single device; remove {flags}")
    module = load_recipe(recipe)
    if given and not getattr(module, "DISTRIBUTED", False):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"recipe {recipe!r} runs on a single device; remove {flags}")
    prepared = prepare(module, config, overrides, allow_any=allow_any_component, check_files=True)
    if given:
        _torchrun(recipe, config, overrides, given, allow_any_component)
        return
    run(prepared)


def _torchrun(
    recipe: str, config: str, overrides: tuple[str, ...], flags: dict[str, Any], allow_any: bool
) -> NoReturn:
    """Replace this process with torchrun (``ft_recipes._launcher``) running the same command per rank.

    ``exec`` rather than a child process: a signal for the job (Ctrl-C, SLURM's SIGTERM at a time
    limit) reaches torchrun's agent directly, which stops its workers, so no rank outlives the job.
    """
    args = [sys.executable, "-m", "ft_recipes._launcher"]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    args += ["-m", "ft_tune.cli", "run", recipe, "--config", config, *overrides]
    if allow_any:
        args.append("--allow-any-component")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, {**os.environ, "FT_TUNE_WORKER": "1"})


@main.command("download")
@click.argument("repo_id")
@click.option("--output-dir", type=click.Path(path_type=Path), default=None, help="Default: ./<repo name>.")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit.")
@click.option("--include", multiple=True, help="Glob of files to fetch (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
@click.option(
    "--token", default=None, help="Hub token (default: $HF_TOKEN or the saved login). Never printed."
)
@click.option("--allow-pickle", is_flag=True, help="Also fetch pickle weights (*.bin, *.pt, *.pth, *.ckpt).")
def download_cmd(
    repo_id: str,
    output_dir: Path | None,
    revision: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    token: str | None,
    allow_pickle: bool,
) -> None:
    """Download a model repository from the Hugging Face Hub (resumable, with a progress bar)."""
    from ft_recipes.download import download

    path = download(
        repo_id,
        output_dir=output_dir,
        revision=revision,
        include=list(include) or None,
        exclude=list(exclude) or None,
        token=token,
        allow_pickle=allow_pickle,
    )
    click.echo(f"downloaded {repo_id} to {path}")


@main.group("data", cls=_Group)
def data_group() -> None:
    """Look at data as the model sees it."""


@data_group.command("inspect")
@click.option("--config", "-c", "config", required=True, help="Shipped config name or YAML path.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.option("--index", default=0, show_default=True, help="Which example.")
@click.option(
    "--color/--no-color", default=None, help="Colour trained tokens (default: when stdout is a terminal)."
)
def inspect_cmd(config: str, overrides: tuple[str, ...], index: int, color: bool | None) -> None:
    """Print one example token by token, marking the tokens the loss trains on."""
    from ft_recipes.inspect import inspect_example

    use_color = sys.stdout.isatty() if color is None else color
    click.echo(inspect_example(config, overrides, index=index, color=use_color), nl=False, color=use_color)


@main.group("export", cls=_Group)
def export_group() -> None:
    """Write a model in another format (GGUF for llama.cpp, Ollama and LM Studio)."""


@export_group.command("gguf")
@click.argument("source", metavar="SRC")
@click.argument("output", metavar="OUT", type=click.Path(path_type=Path))
@click.option(
    "--type",
    "tensor_type",
    default="f16",
    show_default=True,
    help="Storage of the weights: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1 or q4_0 (norms stay f32).",
)
@click.option("--adapter", default=None, help="A PEFT adapter directory, merged into SRC first.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_gguf_cmd(source: str, output: Path, tensor_type: str, adapter: str | None, force: bool) -> None:
    """Write SRC as the GGUF file OUT.

    SRC is an HF model directory, a .gguf file, a PEFT adapter directory (merged into the base it names)
    or an ft training output (its model/, merged/ or adapter/).
    """
    from ft_recipes.export import export_gguf

    done = export_gguf(source, output, tensor_type=tensor_type, adapter=adapter, force=force)
    merged = f" + adapter {done.adapter}" if done.adapter is not None else ""
    click.echo(f"wrote {done.path} ({done.tensor_type}, {done.size / 1e6:.1f} MB) from {done.base}{merged}")


@main.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script: eval "$(tune completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.UsageError(f"no completion for {shell}")
    click.echo(cls(main, {}, "tune", "_TUNE_COMPLETE").source())


if __name__ == "__main__":  # pragma: no cover
    main()
