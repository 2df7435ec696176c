"""Package contract: `import ft_data` stays light (no optional dependency, no other ft package),
and every loader returns something that satisfies the `Tokenizer` protocol."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ft_data


def test_import_is_light_and_standalone() -> None:
    code = "import json, sys, ft_data; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    assert "ft_data" in loaded
    heavy = {"gguf", "sentencepiece", "tokenizers", "transformers", "datasets", "pyarrow", "torch"}
    assert not loaded & heavy, loaded & heavy
    assert not {m for m in loaded if m.startswith("ft_") and m != "ft_data"}


def test_every_loader_satisfies_the_protocol(
    smollm_gguf: Path, llama_models_dir: Path, mistral_data: Path
) -> None:
    paths = [
        smollm_gguf,
        llama_models_dir / "llama3" / "tokenizer.model",
        mistral_data / "tekken_240911.json",
        mistral_data / "mistral_instruct_tokenizer_240323.model.v3",
    ]
    for path in paths:
        tok = ft_data.load_tokenizer(path)
        assert isinstance(tok, ft_data.Tokenizer), path
        assert tok.vocab_size > max(tok.special_tokens.values())
        assert tok.decode(tok.encode("Grüße, 世界! 123")) == "Grüße, 世界! 123"
