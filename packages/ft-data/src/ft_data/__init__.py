"""ft-data: tokenizers, chat templates, datasets and packing for ft.

`import ft_data` stays light (no torch): the batch helpers (`Loader`, `collate_rows`,
`collate_generation`, `pack_rows`, `row_order`) and `read_gguf_metadata` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ft_data._chat import END_OF_TURN_MARKERS, TokenizedChat, TrainOn, tokenize_chat
from ft_data._dataset import DatasetReport, TokenizedDataset, build_dataset
from ft_data._inspect import (
    PreferenceView,
    TokenView,
    format_example,
    format_preference,
    inspect_example,
    inspect_preference,
)
from ft_data._labels import IGNORE_INDEX, labels_from_mask
from ft_data._load import load_tokenizer
from ft_data._messages import (
    Message,
    ToolCall,
    from_alpaca,
    from_input_output,
    from_openai,
    from_preference,
    from_sharegpt,
    validate_roles,
)
from ft_data._preference import PREFERENCE_FIELDS, build_preference_dataset, extract_prompt
from ft_data._protocol import Tokenizer
from ft_data._sources import RowSource, read_rows
from ft_data._template import BUILTIN_TEMPLATES, apply_chat_template, load_chat_template

if TYPE_CHECKING:
    from ft_data._collate import collate_generation, collate_preference, collate_rows
    from ft_data._gguf import read_gguf_metadata
    from ft_data._gguf_write import gguf_tokenizer_metadata
    from ft_data._loader import Loader, pack_rows, row_order

__version__ = "0.1.0"

_LAZY = {
    "Loader": "ft_data._loader",
    "pack_rows": "ft_data._loader",
    "row_order": "ft_data._loader",
    "collate_rows": "ft_data._collate",
    "collate_generation": "ft_data._collate",
    "collate_preference": "ft_data._collate",
    "read_gguf_metadata": "ft_data._gguf",
    "gguf_tokenizer_metadata": "ft_data._gguf_write",
}

__all__ = [
    "BUILTIN_TEMPLATES",
    "END_OF_TURN_MARKERS",
    "IGNORE_INDEX",
    "PREFERENCE_FIELDS",
    "DatasetReport",
    "Loader",
    "Message",
    "PreferenceView",
    "RowSource",
    "TokenView",
    "TokenizedChat",
    "TokenizedDataset",
    "Tokenizer",
    "ToolCall",
    "TrainOn",
    "__version__",
    "apply_chat_template",
    "build_dataset",
    "build_preference_dataset",
    "collate_generation",
    "collate_preference",
    "collate_rows",
    "extract_prompt",
    "format_example",
    "format_preference",
    "from_alpaca",
    "from_input_output",
    "from_openai",
    "from_preference",
    "from_sharegpt",
    "gguf_tokenizer_metadata",
    "inspect_example",
    "inspect_preference",
    "labels_from_mask",
    "load_chat_template",
    "load_tokenizer",
    "pack_rows",
    "read_gguf_metadata",
    "read_rows",
    "row_order",
    "tokenize_chat",
    "validate_roles",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ft_data' has no attribute {name!r}")
