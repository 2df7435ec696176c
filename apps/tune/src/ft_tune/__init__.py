"""ft-tune: the `tune` command-line interface of ft (a thin, lazily importing click app)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
