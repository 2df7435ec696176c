"""``tune export gguf``: a model (an HF directory, a GGUF file, an ft training output, or a base plus a PEFT
adapter) written as one GGUF file for llama.cpp, Ollama and LM Studio.

The pieces are the libraries' own: ft-models loads the model (``load_pretrained``) and writes the file
(``save_gguf``: llama.cpp's names, q/k row order and storage types, atomically); ft-peft merges an adapter
into the base weights first (``load_adapter`` + ``merge_adapters``); ft-data writes the tokenizer and chat
template as llama.cpp's converter does (``gguf_tokenizer_metadata``). What a source is, is decided from
its files:

* a directory with ``config.json`` (HF) or a ``.gguf`` file: the model itself;
* a directory with ``adapter_config.json``: a PEFT adapter, merged into the base its
  ``base_model_name_or_path`` names (unless ``adapter`` is given, making the directory the base);
* any other directory: an ft training output, whose ``model/`` (full fine-tuning), ``merged/`` or
  ``adapter/`` (LoRA, merged into its base) is taken, in that order.

Everything the user can get wrong (the tensor type, a missing source, an existing output without
``force``, a missing output directory) is checked before torch is imported or a weight is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ft_recipes._assets import resolve_path
from ft_recipes.errors import MissingFileError, UserError

__all__ = ["GGUF_TYPES", "ExportedGGUF", "export_gguf"]

# ft_models.GGUF_TENSOR_TYPES, restated so a bad --type is refused without importing torch (a test
# checks the two agree).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
_TRAINING_OUTPUTS = ("model", "merged", "adapter")


@dataclass(frozen=True)
class ExportedGGUF:
    """What :func:`export_gguf` wrote.

    Attributes:
        path: The GGUF file.
        base: The model directory or file the weights came from.
        adapter: The PEFT adapter merged into them, if any.
        tensor_type: The storage type of the 2-D weights.
        size: The file's size in bytes.
    """

    path: Path
    base: Path
    adapter: Path | None
    tensor_type: str
    size: int


def _resolve_source(source: str, adapter: str | None) -> tuple[Path, Path | None]:
    """The base model path and the adapter directory (or None) a ``tune export`` source stands for."""
    src = resolve_path(source)
    if not src.exists():
        raise MissingFileError(f"{source}: no such file or directory")
    adapter_dir = None
    if adapter is not None:
        adapter_dir = resolve_path(adapter)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise MissingFileError(f"--adapter {adapter}: no adapter_config.json there")
    if src.is_file():
        if src.suffix != ".gguf":
            raise UserError(f"{source}: expected a model directory, a .gguf file or an ft training output")
        return src, adapter_dir
    if (src / "config.json").is_file():
        return src, adapter_dir
    if (src / "adapter_config.json").is_file() and adapter_dir is None:
        return _adapter_base(src), src
    for name in _TRAINING_OUTPUTS:
        inner = src / name
        if name == "adapter" and (inner / "adapter_config.json").is_file() and adapter_dir is None:
            return _adapter_base(inner), inner
        if name != "adapter" and (inner / "config.json").is_file():
            return inner, adapter_dir
    raise UserError(
        f"{source}: not a model directory (config.json), a PEFT adapter (adapter_config.json) or an ft "
        "training output (model/, merged/ or adapter/)"
    )


def _adapter_base(adapter_dir: Path) -> Path:
    """The base model a PEFT adapter was trained on (its ``base_model_name_or_path``, which must exist)."""
    config_path = adapter_dir / "adapter_config.json"
    try:
        base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{config_path}: not a readable adapter config ({e})") from None
    if not isinstance(base, str) or not base:
        raise UserError(f"{config_path}: key 'base_model_name_or_path' is missing; pass the base as SRC")
    path = Path(base) if Path(base).is_absolute() else (adapter_dir / base)
    if not path.exists():
        raise MissingFileError(
            f"{config_path}: base_model_name_or_path {base!r} is not on this machine; pass the base as SRC "
            "and the adapter with --adapter"
        )
    return path


def _check_output(output: Path, force: bool) -> None:
    if not output.parent.is_dir():
        raise MissingFileError(f"{output}: directory {output.parent} does not exist")
    if output.is_dir():
        raise UserError(f"{output}: is a directory; give the .gguf file to write")
    if output.exists() and not force:
        raise UserError(f"{output}: already exists; pass --force to replace it")


def export_gguf(
    source: str,
    output: str | Path,
    *,
    tensor_type: str = "f16",
    adapter: str | None = None,
    force: bool = False,
) -> ExportedGGUF:
    """Write ``source`` (merged with ``adapter``) as the GGUF file ``output``.

    Args:
        source: An HF model directory, a ``.gguf`` file, a PEFT adapter directory or an ft training
            output (see the module docstring); ``asset://`` paths work as in configs.
        output: The ``.gguf`` file to write (its directory must exist).
        tensor_type: Storage type of the 2-D weights (:data:`GGUF_TYPES`); norms stay f32.
        adapter: A PEFT adapter directory merged into ``source`` first.
        force: Replace an existing ``output``.

    Returns:
        What was written.

    Raises:
        UserError: A bad type, source, adapter or output path (one line naming it).
        ft_models.CheckpointError, ft_peft.errors.FtPeftError, ft_data.errors.FtDataError: a model,
            adapter or tokenizer that cannot be read or written as GGUF (an unsupported architecture or
            setting names itself).
    """
    if tensor_type not in GGUF_TYPES:
        raise UserError(f"--type {tensor_type!r} is not supported (supported: {', '.join(GGUF_TYPES)})")
    out = Path(output).expanduser().absolute()
    _check_output(out, force)
    base, adapter_dir = _resolve_source(source, adapter)

    import ft_data
    import ft_models

    model = ft_models.from_pretrained(base)
    ft_models.check_gguf_export(model.config, tensor_type)  # an unsupported setting names itself first
    if adapter_dir is not None:
        import ft_peft
        from ft_peft.errors import FtPeftError

        try:  # every key and shape is checked before a weight changes
            ft_peft.load_adapter(model, adapter_dir)
        except FtPeftError as e:
            raise UserError(f"--adapter {adapter_dir}: {e}") from None
        ft_peft.merge_adapters(model)
    tokenizer = ft_data.load_tokenizer(base)
    metadata = ft_data.gguf_tokenizer_metadata(tokenizer, vocab_size=model.config.vocab_size)
    src = resolve_path(source).absolute()
    metadata["general.name"] = src.stem if src.is_file() else src.name
    ft_models.save_gguf(model, out, tensor_type=tensor_type, metadata=metadata, overwrite=force)
    return ExportedGGUF(out, base, adapter_dir, tensor_type, out.stat().st_size)
