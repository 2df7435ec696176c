"""Labels from a loss mask: the one place where targets are shifted.

``labels[t]`` is the token the model must predict at position ``t``, i.e. ``input_ids[t + 1]`` when
that token is trained, else -100 (ignored). Shifting once, per example and before packing, means
the loss never shifts again (``cross_entropy(logits[b, t], labels[b, t])``) and the last token of a
packed document can never be asked to predict the first token of the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["IGNORE_INDEX", "labels_from_mask"]

IGNORE_INDEX = -100
"""Label of a position that is not trained (PyTorch's ``cross_entropy`` default ``ignore_index``)."""


def labels_from_mask(input_ids: Sequence[int], mask: Sequence[bool]) -> list[int]:
    """Shifted labels ``[s]``: ``input_ids[t + 1]`` where ``mask[t + 1]``, else -100.

    Labels come only from the mask, never from comparing ids with the pad id (SmolLM2's pad id is
    its EOS id, whose every occurrence must be learned).

    Args:
        input_ids: Token ids ``[s]``.
        mask: Per token, whether it is a training target ``[s]``.
    """
    if len(input_ids) != len(mask):
        raise ValueError(f"input_ids has {len(input_ids)} tokens but mask has {len(mask)}")
    out = [input_ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(input_ids) - 1)]
    return [*out, IGNORE_INDEX] if input_ids else []
