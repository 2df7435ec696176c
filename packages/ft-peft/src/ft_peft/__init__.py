"""ft-peft: LoRA, DoRA and QLoRA modules usable in any PyTorch training loop.

Only torch is required; bitsandbytes (the `qlora` extra) is imported when a quantised base is asked for.
"""

from ft_peft._apply import (
    MergedWeight,
    adapter_state_dict,
    apply_lora,
    disable_adapters,
    lora_modules,
    merge_adapters,
    merged_state_dict,
    set_trainable,
)
from ft_peft._io import load_adapter, save_adapter
from ft_peft._lora import LoRALinear
from ft_peft._protocols import AdapterModule
from ft_peft._quant import QuantConfig, quantized_nbytes

__version__ = "0.1.0"

__all__ = [
    "AdapterModule",
    "LoRALinear",
    "MergedWeight",
    "QuantConfig",
    "__version__",
    "adapter_state_dict",
    "apply_lora",
    "disable_adapters",
    "load_adapter",
    "lora_modules",
    "merge_adapters",
    "merged_state_dict",
    "quantized_nbytes",
    "save_adapter",
    "set_trainable",
]
