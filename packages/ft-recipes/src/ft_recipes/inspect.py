"""``tune data inspect``: one example of a config's dataset as the model sees it, token by token.

The config needs a ``tokenizer`` and a ``dataset`` component (``ft_data.build_dataset`` or
``ft_data.build_preference_dataset``, which receive the tokenizer). A preference pair is shown as its
shared prompt and the chosen and rejected answers with their trained tokens. The trained flag of each token is read back from the example's labels by
ft-data, so the view shows what the loss will actually train on. In a terminal, trained tokens are
green and the rest dim, inline; otherwise one token per line with ``+`` (trained) or ``.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ft_recipes.config import COMPONENT, instantiate, resolve_component
from ft_recipes.errors import ConfigError, UserError
from ft_recipes.runner import load_recipe_config

__all__ = ["inspect_example"]

_GREEN, _DIM, _RESET = "\x1b[42;30m", "\x1b[2m", "\x1b[0m"


def inspect_example(
    config: str, overrides: Sequence[str] = (), *, index: int = 0, color: bool = False
) -> str:
    """The rendering of example ``index`` of the config's dataset.

    Raises:
        ConfigError: The config lacks a ``tokenizer`` or ``dataset`` component.
        UserError: ``index`` out of range, or an example without ``input_ids`` and ``labels``.
    """
    import ft_data

    cfg = load_recipe_config(config, overrides)  # overrides typed by the config's recipe, as in `tune run`
    path = Path(cfg.file)
    for key in ("tokenizer", "dataset"):
        node = cfg.data.get(key)
        if not isinstance(node, dict) or COMPONENT not in node:
            raise ConfigError(
                f"{cfg.at(key)}: {key}: `tune data inspect` needs a {key} component in the config"
            )
        resolve_component(node[COMPONENT], key=key, where=cfg.at(key), config_dir=path.resolve().parent)
    tokenizer = instantiate(cfg.data["tokenizer"], key="tokenizer", config_dir=path.resolve().parent)
    dataset = instantiate(
        cfg.data["dataset"], key="dataset", config_dir=path.resolve().parent, tokenizer=tokenizer
    )
    if not 0 <= index < len(dataset):
        raise UserError(f"--index {index}: the dataset has {len(dataset)} examples")
    example = dataset[index]
    if "chosen_input_ids" in example:
        return _preference(example, tokenizer, color)
    if "input_ids" not in example or "labels" not in example:
        raise UserError(f"{config}: example {index} has fields {sorted(example)}, not input_ids and labels")
    if not color:
        return ft_data.format_example(example["input_ids"], example["labels"], tokenizer) + "\n"
    views = ft_data.inspect_example(example["input_ids"], example["labels"], tokenizer)
    trained = sum(v.trained for v in views)
    body = "".join(f"{_GREEN if v.trained else _DIM}{v.text}{_RESET}" for v in views)
    return f"{len(views)} tokens, {trained} trained (green)\n{body}\n"


def _preference(example: dict[str, list[int]], tokenizer: object, color: bool) -> str:
    import ft_data

    if not color:
        return ft_data.format_preference(example, tokenizer) + "\n"  # type: ignore[arg-type]
    view = ft_data.inspect_preference(example, tokenizer)  # type: ignore[arg-type]
    lines = [
        f"prompt ({len(view.prompt)} tokens, not trained)",
        f"{_DIM}{''.join(v.text for v in view.prompt)}{_RESET}",
    ]
    for side, views in (("chosen", view.chosen), ("rejected", view.rejected)):
        trained = sum(v.trained for v in views)
        lines.append(f"{side} ({len(views)} tokens, {trained} trained, green)")
        lines.append("".join(f"{_GREEN if v.trained else _DIM}{v.text}{_RESET}" for v in views))
    return "\n".join(lines) + "\n"
