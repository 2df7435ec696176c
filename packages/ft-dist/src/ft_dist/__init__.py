"""ft-dist: FSDP2 sharding, activation checkpointing and atomic DCP training checkpoints, applied from
outside the model.

Everything here works in one process without ``init_process_group`` and unchanged under
``torch.distributed``: a launch helper, the data-parallel mesh, sharding with sum reductions, the
global token count, clipping over sharded gradients, and checkpoints that every rank writes.
"""

from ft_dist._activation_checkpointing import apply_activation_checkpointing, decoder_layers
from ft_dist._async_checkpoint import PendingCheckpoint, save_checkpoint_async
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
from ft_dist._clip import clip_grad_norm_
from ft_dist._launch import Launch, abort_on_failure, global_count, init_distributed
from ft_dist._led import led_by_rank0
from ft_dist._mesh import build_mesh, collective_device, mesh_shape
from ft_dist._placement import gathered, shard_placements, shard_tensor
from ft_dist._rng import rng_state, set_rng_state
from ft_dist._safe_io import read_metadata
from ft_dist._shard import fsdp_modules, is_sharded, output_group, set_gradient_sync, shard_model
from ft_dist.errors import (
    CheckpointError,
    DistributedError,
    FtDistError,
    RankFailedError,
    ShardingError,
    UnsafeCheckpointError,
)

__version__ = "0.1.0"

__all__ = [
    "MARKER",
    "CheckpointError",
    "DistributedError",
    "FtDistError",
    "Launch",
    "ModelOptimizerState",
    "PendingCheckpoint",
    "RankFailedError",
    "ShardingError",
    "UnsafeCheckpointError",
    "__version__",
    "abort_on_failure",
    "apply_activation_checkpointing",
    "build_mesh",
    "checkpoint_info",
    "clean_checkpoints",
    "clip_grad_norm_",
    "collective_device",
    "decoder_layers",
    "fsdp_modules",
    "gathered",
    "global_count",
    "init_distributed",
    "is_checkpoint",
    "is_sharded",
    "latest_checkpoint",
    "led_by_rank0",
    "load_checkpoint",
    "mesh_shape",
    "output_group",
    "prune_checkpoints",
    "publish_dir",
    "read_metadata",
    "read_rank_state",
    "rng_state",
    "save_checkpoint",
    "save_checkpoint_async",
    "set_gradient_sync",
    "set_rng_state",
    "shard_model",
    "shard_placements",
    "shard_tensor",
    "write_atomic",
]
