"""ft-models: decoder architectures, KV cache, greedy generation and checkpoint formats for ft.

Llama (Llama 3 / 3.1 / 3.2, SmolLM2), Qwen2 / Qwen2.5, Qwen3, Mistral and Gemma 2 models with
transformers' module names, loaded from
Hugging Face safetensors directories or GGUF files, saved as directories transformers loads as is and as
GGUF files llama.cpp runs.
"""

from ._assets import AssetNotFoundError, asset_path, smollm2_gguf_path
from ._attention import (
    AttentionKernel,
    EagerKernel,
    GroupedQueryAttention,
    SDPAKernel,
    grouped_matmul_attention,
    soft_cap,
)
from ._cache import KVCache
from ._checkpoint import LoadedCheckpoint, convert_pretrained, empty_model, from_pretrained, load_pretrained
from ._config import DecoderConfig, RopeConfig
from ._decode_step import DecodeStep
from ._decoder import (
    CausalLM,
    DecoderLayer,
    SandwichDecoderLayer,
    TransformerDecoder,
    positions_from_documents,
)
from ._family import Family
from ._gemma2 import GEMMA2_PRESETS, build_gemma2, gemma2_config
from ._generate import generate, left_pad
from ._gguf_write import GGUF_TENSOR_TYPES, check_gguf_export, save_gguf
from ._hugepages import huge_pages_available, place_in_huge_pages
from ._kernel_choice import (
    ATTENTION_KERNELS,
    GROUPED_MAX_KEYS,
    AttentionKernelName,
    AutoKernel,
    GroupedKernel,
    attention_kernel,
    auto_attention_kernel,
    set_attention_kernel,
)
from ._llama import LLAMA_PRESETS, build_llama, llama_config
from ._load import InitAfterLoad, Placement, ShardFn, load_weights
from ._mask import AttentionMask
from ._mistral import MISTRAL_PRESETS, mistral_config
from ._mlp import GatedMLP
from ._norm import RMSNorm, UnitOffsetRMSNorm
from ._qwen2 import QWEN2_PRESETS, build_qwen2, qwen2_config
from ._qwen3 import QWEN3_PRESETS, build_qwen3, qwen3_config
from ._registry import FAMILIES, PRESETS, build_model, preset_config
from ._rope import RotaryEmbedding
from ._sampling import SamplingConfig
from ._save import save_pretrained, write_pretrained
from ._segments import DocumentSegments
from ._shards import DeferredTensor
from ._source import CheckpointFormat, CheckpointSource, TensorInfo, checkpoint_format, open_checkpoint
from ._stopping import Decode, GenerationStats, peak_memory_bytes, read_stop_token_ids
from ._stream import StreamChunk, TextBuffer, generate_stream
from .errors import CacheError, CheckpointError, ConfigError, FtModelsError

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_KERNELS",
    "FAMILIES",
    "GEMMA2_PRESETS",
    "GGUF_TENSOR_TYPES",
    "GROUPED_MAX_KEYS",
    "LLAMA_PRESETS",
    "MISTRAL_PRESETS",
    "PRESETS",
    "QWEN2_PRESETS",
    "QWEN3_PRESETS",
    "AssetNotFoundError",
    "AttentionKernel",
    "AttentionKernelName",
    "AttentionMask",
    "AutoKernel",
    "CacheError",
    "CausalLM",
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointSource",
    "ConfigError",
    "Decode",
    "DecodeStep",
    "DecoderConfig",
    "DecoderLayer",
    "DeferredTensor",
    "DocumentSegments",
    "EagerKernel",
    "Family",
    "FtModelsError",
    "GatedMLP",
    "GenerationStats",
    "GroupedKernel",
    "GroupedQueryAttention",
    "InitAfterLoad",
    "KVCache",
    "LoadedCheckpoint",
    "Placement",
    "RMSNorm",
    "RopeConfig",
    "RotaryEmbedding",
    "SDPAKernel",
    "SamplingConfig",
    "SandwichDecoderLayer",
    "ShardFn",
    "StreamChunk",
    "TensorInfo",
    "TextBuffer",
    "TransformerDecoder",
    "UnitOffsetRMSNorm",
    "__version__",
    "asset_path",
    "attention_kernel",
    "auto_attention_kernel",
    "build_gemma2",
    "build_llama",
    "build_model",
    "build_qwen2",
    "build_qwen3",
    "check_gguf_export",
    "checkpoint_format",
    "convert_pretrained",
    "empty_model",
    "from_pretrained",
    "gemma2_config",
    "generate",
    "generate_stream",
    "grouped_matmul_attention",
    "huge_pages_available",
    "left_pad",
    "llama_config",
    "load_pretrained",
    "load_weights",
    "mistral_config",
    "open_checkpoint",
    "peak_memory_bytes",
    "place_in_huge_pages",
    "positions_from_documents",
    "preset_config",
    "qwen2_config",
    "qwen3_config",
    "read_stop_token_ids",
    "save_gguf",
    "save_pretrained",
    "set_attention_kernel",
    "smollm2_gguf_path",
    "soft_cap",
    "write_pretrained",
]
