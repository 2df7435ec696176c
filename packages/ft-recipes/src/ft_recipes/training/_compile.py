"""``torch.compile`` per decoder block (regional compilation), keeping every state-dict key.

``torch.compile(model)`` returns an ``OptimizedModule`` whose state dict prefixes every key with
``_orig_mod.``: a checkpoint written from it no longer loads into an eager model, and an HF directory
written from it names no transformers parameter. ``nn.Module.compile()`` compiles a module's call in
place instead, so the module tree and its keys do not change. Compiling each decoder block rather
than the whole model also compiles one block's graph and reuses it for the others (every block runs
the same code on same-shaped parameters), which keeps compile time flat in depth.

Apply after the precision policy and activation checkpointing: the compiled call then traces the
per-unit casts and the checkpointed region with the block. That works only because nothing inside a
block writes state while it runs (the attention mask is built before the layers, the bf16 cast is a
temporary reparametrisation): dynamo refuses such writes inside a checkpoint and would run the block
eagerly. ``tests/test_recipe_features_compile.py`` counts the graphs to keep it so.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ft_dist import decoder_layers
from ft_recipes.training.errors import TrainingError

__all__ = ["compile_blocks"]


def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> int:
    """Compile each decoder block of ``model`` in place (``block.compile(**compile_kwargs)``).

    Args:
        model: A decoder whose blocks are the children of an ``nn.ModuleList`` named ``layers``
            (ft-models' and transformers' ``model.layers.{i}``).
        compile_kwargs: Passed to ``torch.compile`` (``backend``, ``mode``, ``dynamic``, ...).

    Returns:
        The number of blocks compiled.

    Raises:
        TrainingError: ``model`` has no ``layers`` list to compile.
    """
    blocks = decoder_layers(model)
    if not blocks:
        raise TrainingError(f"compile: {type(model).__name__} has no decoder blocks (no `layers` list)")
    for block in blocks:
        block.compile(**compile_kwargs)
    return len(blocks)
