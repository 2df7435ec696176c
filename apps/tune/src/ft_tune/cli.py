"""The `tune` command.

Start-up stays fast: this module imports only click and the standard library. Anything heavy
(torch, the recipes) is imported inside the command callbacks that need it.
"""

from __future__ import annotations

import click

from ft_tune import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tune")
def main() -> None:
    """ft: fine-tune and run open LLMs with plain PyTorch."""


if __name__ == "__main__":  # pragma: no cover
    main()
