"""ft-models: Decoder architectures (GQA/SDPA, KV cache), generation and checkpoint formats for ft."""

__version__ = "0.1.0"

__all__ = ["__version__"]
