"""ft-recipes: Config system, recipe registry and recipes for ft."""

__version__ = "0.1.0"

__all__ = ["__version__"]
