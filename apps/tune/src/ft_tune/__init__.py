"""ft-tune: The `tune` command-line interface of ft."""

__version__ = "0.1.0"

__all__ = ["__version__"]
