"""Pre-tokenization: the regex splits that run before byte-pair merges (GPT-2, Radford et al. 2019).

A pre-tokenizer is a list of regex *stages*. Each stage splits every piece from the previous stage
into its matches and the gaps between them, keeping both (Hugging Face ``Split(behavior=Isolated)``
and llama.cpp's ``unicode_regex_split`` both work this way). The last stage runs inside tiktoken's
Rust core together with the merges; earlier stages run in Python with the ``regex`` module. Where
a stack of stages equals one regex (digits isolated one by one, then the GPT-2 split) the fused
regex is used, so the whole encode stays in one native call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import regex

from ft_data.errors import UnsupportedTokenizerError

__all__ = [
    "GPT2",
    "LLAMA3",
    "QWEN2",
    "PreTokenizer",
    "from_hf_json",
    "from_llama_cpp_pre",
    "to_llama_cpp_pre",
]

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp writes GPT-2 without the final `\s+`; the gap rule of a stage covers it.
GPT2_LLAMA_CPP = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_LLAMA_CPP = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 / Qwen2.5 / Qwen3's tokenizer.json split (llama.cpp writes the contractions as classes, QWEN2).
QWEN2_HF = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN35 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DIGIT = r"\p{N}"
DIGITS = r"\p{N}+"
# Digits isolated one by one, then GPT-2, as one regex: a digit is its own piece, and whitespace
# right before a digit ends its piece whole (it was the end of a stage-one piece).
_GPT2_ISOLATED_DIGITS = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"
)
_FUSED: dict[tuple[str, ...], str] = {
    (DIGIT, GPT2): _GPT2_ISOLATED_DIGITS,
    (DIGIT, GPT2_LLAMA_CPP): _GPT2_ISOLATED_DIGITS,
}
# Regexes known to match every character, so the gap rule adds nothing.
_TOTAL = {GPT2, LLAMA3, LLAMA3_LLAMA_CPP, QWEN2, QWEN35, _GPT2_ISOLATED_DIGITS}

# llama.cpp `tokenizer.ggml.pre` names whose split ft implements and checks against llama.cpp's
# expected ids (tests); any other name is refused rather than replaced by a default.
_LLAMA_CPP_PRE: dict[str, tuple[tuple[str, ...], bool]] = {
    # name: (stages, ignore_merges)
    "gpt-2": ((GPT2_LLAMA_CPP,), False),
    "mpt": ((GPT2_LLAMA_CPP,), False),
    "olmo": ((GPT2_LLAMA_CPP,), False),
    "llama-bpe": ((LLAMA3_LLAMA_CPP,), True),
    "llama3": ((LLAMA3_LLAMA_CPP,), True),
    "qwen2": ((QWEN2,), False),
    "qwen35": ((QWEN35,), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", GPT2_LLAMA_CPP, r"[0-9][0-9][0-9]"), False),
    "deepseek-coder": ((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", DIGIT), False),
    "starcoder": ((DIGIT, GPT2_LLAMA_CPP), False),
    "refact": ((DIGIT, GPT2_LLAMA_CPP), False),
    "command-r": ((DIGIT, GPT2_LLAMA_CPP), False),
    "smollm": ((DIGIT, GPT2_LLAMA_CPP), False),
}


# Hugging Face tokenizer.json regexes whose llama.cpp adaptation is in the table above: the converter
# gives such a tokenizer the name of the adapted split (its hash of the model's ids says so).
_HF_AS_LLAMA_CPP = {GPT2: GPT2_LLAMA_CPP, LLAMA3: LLAMA3_LLAMA_CPP, QWEN2_HF: QWEN2}
# Names written for a split, for the splits llama.cpp knows under several names (what its converter
# writes for the supported families: SmolLM2 `smollm`, Llama 3 `llama-bpe`, Qwen2/2.5/3 `qwen2`).
_WRITTEN_NAMES = (
    "gpt-2", "llama-bpe", "qwen2", "qwen35", "smollm", "falcon", "deepseek-coder",
)  # fmt: skip


@dataclass(frozen=True)
class PreTokenizer:
    """Regex stages applied before the merges.

    Attributes:
        stages: Regex sources (fancy-regex / ``regex`` syntax), applied in order.
        add_prefix_space: Prepend a space to text that does not start with one (ByteLevel option).
        keep_gaps: Text the last regex does not match is a piece (Hugging Face, llama.cpp); False
            drops it, as tiktoken itself does (tiktoken and Tekken files).
    """

    stages: tuple[str, ...]
    add_prefix_space: bool = False
    keep_gaps: bool = True

    def __post_init__(self) -> None:
        if not self.stages:
            raise UnsupportedTokenizerError("pre-tokenizer: a byte-level BPE needs at least one split regex")

    @cached_property
    def fused(self) -> tuple[str, ...]:
        """The stages with known stacks replaced by one equivalent regex."""
        return (_FUSED[self.stages],) if self.stages in _FUSED else self.stages

    def native_pattern(self, fuse: bool = True) -> str:
        """The regex for tiktoken's core: the last stage, extended to also match the gaps.

        A gap (text the regex does not match) is a piece of its own in Hugging Face and llama.cpp,
        while tiktoken drops it, so a non-total regex R becomes ``R|(?:(?!R)[\\s\\S])+``.
        """
        last = (self.fused if fuse else self.stages)[-1]
        if last in _TOTAL or not self.keep_gaps:
            return last
        return f"(?:{last})|(?:(?!(?:{last}))[\\s\\S])+"

    def python_stages(self, fuse: bool = True) -> list[regex.Pattern[str]]:
        """Compiled stages that run in Python before the native one."""
        return [regex.compile(s) for s in (self.fused if fuse else self.stages)[:-1]]

    def to_hf_json(self) -> dict[str, Any]:
        """The Hugging Face ``pre_tokenizer`` JSON: one isolating Split per stage, then ByteLevel."""
        steps: list[dict[str, Any]] = [
            {"type": "Split", "pattern": {"Regex": s}, "behavior": "Isolated", "invert": False}
            for s in self.stages
        ]
        steps.append(
            {
                "type": "ByteLevel",
                "add_prefix_space": self.add_prefix_space,
                "trim_offsets": False,
                "use_regex": False,
            }
        )
        return {"type": "Sequence", "pretokenizers": steps}


def split_stage(pattern: regex.Pattern[str], pieces: list[str]) -> list[str]:
    """Split every piece into matches and gaps (Hugging Face ``Isolated`` behaviour)."""
    out: list[str] = []
    for piece in pieces:
        pos = 0
        for m in pattern.finditer(piece):
            if m.start() > pos:
                out.append(piece[pos : m.start()])
            if m.end() > m.start():
                out.append(m.group())
            pos = m.end()
        if pos < len(piece):
            out.append(piece[pos:])
    return out


def iter_pieces(stages: list[regex.Pattern[str]], text: str) -> Iterator[str]:
    """Apply the Python-side stages to `text`."""
    pieces = [text]
    for stage in stages:
        pieces = split_stage(stage, pieces)
    yield from pieces


def from_llama_cpp_pre(pre: str | None, where: str) -> tuple[PreTokenizer, bool]:
    """Map a GGUF ``tokenizer.ggml.pre`` name to its stages and whether merges are bypassed.

    Args:
        pre: The value of ``tokenizer.ggml.pre`` (None when the key is absent).
        where: File name for the error message.
    """
    if pre is None:
        raise UnsupportedTokenizerError(
            f"{where}: tokenizer.ggml.pre is missing; ft does not guess a pre-tokenizer for a gpt2 vocabulary"
        )
    if pre not in _LLAMA_CPP_PRE:
        raise UnsupportedTokenizerError(
            f"{where}: unknown tokenizer.ggml.pre {pre!r}; supported: {', '.join(sorted(_LLAMA_CPP_PRE))}"
        )
    stages, ignore_merges = _LLAMA_CPP_PRE[pre]
    return PreTokenizer(stages), ignore_merges


def to_llama_cpp_pre(pre: PreTokenizer, ignore_merges: bool, where: str) -> str:
    """The ``tokenizer.ggml.pre`` name under which llama.cpp splits text as ``pre`` does.

    The inverse of :func:`from_llama_cpp_pre`: a Hugging Face regex is first replaced by llama.cpp's
    adaptation of it, then the stages and the merge mode must equal one of llama.cpp's names exactly.

    Args:
        pre: The split stages.
        ignore_merges: Whether whole-piece lookups bypass the merges (llama.cpp ties this to the name).
        where: The tokenizer, for the error message.

    Raises:
        UnsupportedTokenizerError: No llama.cpp pre-tokenizer splits text this way (a prefix space,
            tiktoken's dropped gaps, or an unknown regex), naming the tokenizer.
    """
    stages = tuple(_HF_AS_LLAMA_CPP.get(s, s) for s in pre.stages)
    problem = "it adds a prefix space" if pre.add_prefix_space else ""
    if not pre.keep_gaps and stages[-1] not in _TOTAL:
        problem = "it drops text its regex does not match"
    for name in _WRITTEN_NAMES:
        if not problem and _LLAMA_CPP_PRE[name] == (stages, ignore_merges):
            return name
    shown = " then ".join(repr(s[:40] + "..." if len(s) > 40 else s) for s in pre.stages)
    raise UnsupportedTokenizerError(
        f"{where}: no llama.cpp pre-tokenizer (tokenizer.ggml.pre) splits text like this tokenizer "
        f"({problem or f'split {shown}, ignore_merges={ignore_merges}'})"
    )


def _regex_of(node: dict[str, Any], where: str) -> str:
    pattern = node.get("pattern", {})
    if "Regex" in pattern:
        return str(pattern["Regex"])
    if "String" in pattern:
        return regex.escape(str(pattern["String"]))
    raise UnsupportedTokenizerError(f"{where}: Split pre-tokenizer without a pattern: {node!r}")


def from_hf_json(node: dict[str, Any] | None, where: str) -> PreTokenizer:
    """Map a Hugging Face ``pre_tokenizer`` JSON node to stages.

    Supported: ``ByteLevel`` (with or without its GPT-2 regex), ``Split`` with ``Isolated``
    behaviour, ``Digits`` and ``Sequence`` of these. Anything else raises, naming the type.
    """
    if node is None:
        raise UnsupportedTokenizerError(f"{where}: byte-level BPE without a pre_tokenizer is not supported")
    steps = node["pretokenizers"] if node.get("type") == "Sequence" else [node]
    stages: list[str] = []
    prefix = False
    saw_byte_level = False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            saw_byte_level = True
            prefix = bool(step.get("add_prefix_space", False))
            if prefix and stages:
                raise UnsupportedTokenizerError(f"{where}: ByteLevel add_prefix_space after another split")
            if step.get("use_regex", True):
                stages.append(GPT2)
        elif kind == "Split":
            if step.get("behavior") != "Isolated" or step.get("invert", False):
                raise UnsupportedTokenizerError(
                    f"{where}: Split behavior {step.get('behavior')!r} invert={step.get('invert')} "
                    "is not supported (only Isolated)"
                )
            stages.append(_regex_of(step, where))
        elif kind == "Digits":
            stages.append(DIGIT if step.get("individual_digits", False) else DIGITS)
        else:
            raise UnsupportedTokenizerError(f"{where}: unsupported pre-tokenizer type {kind!r}")
    if not saw_byte_level:
        raise UnsupportedTokenizerError(f"{where}: pre_tokenizer has no ByteLevel step; not a byte-level BPE")
    return PreTokenizer(tuple(stages), add_prefix_space=prefix)
