"""ft-dist: activation checkpointing and atomic DCP training checkpoints, applied from outside the model.

Everything here works in one process without ``init_process_group`` and unchanged under
``torch.distributed`` (FSDP2 sharding adds to it, it does not replace it).
"""

from ft_dist._activation_checkpointing import apply_activation_checkpointing, decoder_layers
from ft_dist._atomic import publish_dir, write_atomic
from ft_dist._checkpoint_dirs import (
    MARKER,
    checkpoint_info,
    is_checkpoint,
    latest_checkpoint,
    prune_checkpoints,
)
from ft_dist._checkpointer import (
    ModelOptimizerState,
    clean_checkpoints,
    load_checkpoint,
    read_rank_state,
    save_checkpoint,
)
from ft_dist._rng import rng_state, set_rng_state
from ft_dist._safe_io import read_metadata
from ft_dist.errors import CheckpointError, FtDistError, UnsafeCheckpointError

__version__ = "0.1.0"

__all__ = [
    "MARKER",
    "CheckpointError",
    "FtDistError",
    "ModelOptimizerState",
    "UnsafeCheckpointError",
    "__version__",
    "apply_activation_checkpointing",
    "checkpoint_info",
    "clean_checkpoints",
    "decoder_layers",
    "is_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "publish_dir",
    "read_metadata",
    "read_rank_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_atomic",
]
