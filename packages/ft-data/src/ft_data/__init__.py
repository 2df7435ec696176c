"""ft-data: tokenizers, chat templates, datasets and packing for ft."""

from ft_data._chat import END_OF_TURN_MARKERS, TokenizedChat, TrainOn, tokenize_chat
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
from ft_data._protocol import Tokenizer
from ft_data._template import BUILTIN_TEMPLATES, apply_chat_template, load_chat_template

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_TEMPLATES",
    "END_OF_TURN_MARKERS",
    "IGNORE_INDEX",
    "Message",
    "TokenizedChat",
    "Tokenizer",
    "ToolCall",
    "TrainOn",
    "__version__",
    "apply_chat_template",
    "from_alpaca",
    "from_input_output",
    "from_openai",
    "from_preference",
    "from_sharegpt",
    "labels_from_mask",
    "load_chat_template",
    "load_tokenizer",
    "tokenize_chat",
    "validate_roles",
]
