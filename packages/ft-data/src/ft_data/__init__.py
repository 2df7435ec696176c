"""ft-data: tokenizers, chat templates, datasets and packing for ft."""

from ft_data._load import load_tokenizer
from ft_data._protocol import Tokenizer

__version__ = "0.1.0"

__all__ = ["Tokenizer", "__version__", "load_tokenizer"]
