"""ft-data: Tokenizers, chat templates, datasets and packing for ft."""

__version__ = "0.1.0"

__all__ = ["__version__"]
