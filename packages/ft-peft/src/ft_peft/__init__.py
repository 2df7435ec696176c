"""ft-peft: LoRA, DoRA and QLoRA modules usable in any PyTorch training loop."""

__version__ = "0.1.0"

__all__ = ["__version__"]
