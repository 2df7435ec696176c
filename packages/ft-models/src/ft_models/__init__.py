"""ft-models: decoder architectures, KV cache, greedy generation and checkpoint formats for ft.

Llama-family models (Llama 3 / 3.1 / 3.2, SmolLM2) with transformers' module names, loaded from
Hugging Face safetensors directories or GGUF files and saved as directories transformers loads as is.
"""

from ._assets import AssetNotFoundError, smollm2_gguf_path
from ._attention import AttentionKernel, EagerKernel, GroupedQueryAttention, SDPAKernel, soft_cap
from ._cache import KVCache
from ._checkpoint import from_pretrained
from ._config import DecoderConfig, RopeConfig
from ._decoder import CausalLM, DecoderLayer, TransformerDecoder, positions_from_documents
from ._generate import generate, left_pad
from ._llama import LLAMA_PRESETS, build_llama, llama_config
from ._mask import AttentionMask
from ._mlp import GatedMLP
from ._norm import RMSNorm
from ._registry import build_model
from ._rope import RotaryEmbedding
from ._save import save_pretrained
from .errors import CacheError, CheckpointError, ConfigError, FtModelsError

__version__ = "0.1.0"

__all__ = [
    "LLAMA_PRESETS",
    "AssetNotFoundError",
    "AttentionKernel",
    "AttentionMask",
    "CacheError",
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "DecoderConfig",
    "DecoderLayer",
    "EagerKernel",
    "FtModelsError",
    "GatedMLP",
    "GroupedQueryAttention",
    "KVCache",
    "RMSNorm",
    "RopeConfig",
    "RotaryEmbedding",
    "SDPAKernel",
    "TransformerDecoder",
    "__version__",
    "build_llama",
    "build_model",
    "from_pretrained",
    "generate",
    "left_pad",
    "llama_config",
    "positions_from_documents",
    "save_pretrained",
    "smollm2_gguf_path",
    "soft_cap",
]
