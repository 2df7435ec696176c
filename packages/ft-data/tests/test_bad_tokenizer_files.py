"""Malformed ``tokenizer.json`` / ``tokenizer_config.json`` parts are refused where the file is read.

Each case edits one part of the real SmolLM2 tokenizer as `save_pretrained` writes it. The error is one
``TokenizerFileError`` line naming the file and the JSON path; the `tokenizers` library (the reference
reader) refuses the same edited ``tokenizer.json`` too, and the untouched files load (the control).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer as ReferenceTokenizer

import ft_data
from ft_data.errors import TokenizerFileError

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def saved(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm")
    ft_data.load_tokenizer(smollm_gguf).save_pretrained(out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit(path: Path, edit: Edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _set(dotted: str, value: Any) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *outer, last = dotted.split(".")
        node: Any = data
        for key in outer:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _del(dotted: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *outer, last = dotted.split(".")
        node: Any = data
        for key in outer:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return edit


def test_untouched_files_load(saved: Path) -> None:
    tok = ft_data.load_tokenizer(saved / "tokenizer.json")
    reference = ReferenceTokenizer.from_file(str(saved / "tokenizer.json"))
    text = "Rewrite 3 July 1999 as YYYY-MM-DD, please."
    assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids


TOKENIZER_CASES: list[tuple[str, Edit, str]] = [
    ("model-list", _set("model", [1]), "model: expected an object, got list"),
    ("model-type", _set("model.type", 5), "model.type: expected a string, got int"),
    ("vocab-list", _set("model.vocab", ["a"]), "model.vocab: expected an object of token -> id, got list"),
    (
        "vocab-str-id",
        _set("model.vocab.Ġthe", "12"),
        "model.vocab['Ġthe']: expected a non-negative integer id",
    ),
    (
        "vocab-negative",
        _set("model.vocab.Ġthe", -3),
        "model.vocab['Ġthe']: expected a non-negative integer id",
    ),
    ("merges-object", _set("model.merges", {"a": "b"}), "model.merges: expected a list, got dict"),
    ("merge-single", _set("model.merges.3", ["Ġ"]), "model.merges[3]: expected"),
    ("merge-no-space", _set("model.merges.3", "Ġt"), "model.merges[3]: expected"),
    ("merge-ints", _set("model.merges.3", [1, 2]), "model.merges[3]: expected"),
    ("added-not-list", _set("added_tokens", {"0": "x"}), "added_tokens: expected a list, got dict"),
    ("added-no-id", _del("added_tokens.0.id"), "added_tokens[0].id: expected a non-negative integer"),
    ("added-no-content", _del("added_tokens.0.content"), "added_tokens[0].content: expected a string"),
    ("added-entry-str", _set("added_tokens.0", "<|im_end|>"), "added_tokens[0]: expected an object, got str"),
    ("pre-string", _set("pre_tokenizer", "ByteLevel"), "pre_tokenizer: expected null or an object"),
    ("pre-no-type", _set("pre_tokenizer", {"add_prefix_space": False}), "pre_tokenizer: expected null"),
    ("pre-seq-dict", _set("pre_tokenizer.pretokenizers", {"a": 1}), "pre_tokenizer.pretokenizers: expected"),
    (
        "pre-step-str",
        _set("pre_tokenizer.pretokenizers.0", "Split"),
        "pre_tokenizer.pretokenizers[0]: expected",
    ),
    (
        "pre-bad-regex",
        _set("pre_tokenizer.pretokenizers.0.pattern", {"Regex": "(("}),
        "pre_tokenizer.pretokenizers[0].pattern.Regex: invalid regex",
    ),
    (
        "pre-no-pattern",
        _set("pre_tokenizer.pretokenizers.0.pattern", "x"),
        "pre_tokenizer.pretokenizers[0].pattern: expected",
    ),
    ("normalizer-list", _set("normalizer", [1]), "normalizer: expected null or an object"),
    ("post-list", _set("post_processor", [1]), "post_processor: expected null or an object"),
]


@pytest.mark.parametrize(
    ("edit", "where"), [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES]
)
def test_malformed_tokenizer_json_names_file_and_json_path(
    saved: Path, tmp_path: Path, edit: Edit, where: str
) -> None:
    directory = _copy(saved, tmp_path / "tok")
    path = directory / "tokenizer.json"
    _edit(path, edit)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the reference reader refuses it too, in its own way
        ReferenceTokenizer.from_file(str(path))
    for target in (path, directory):  # the file itself, and a model directory holding it
        with pytest.raises(TokenizerFileError) as info:
            ft_data.load_tokenizer(target)
        message = str(info.value)
        assert message.startswith(f"{path}: {where}"), message
        assert "\n" not in message


def test_template_post_processor_parts_are_checked(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path / "tok")
    path = directory / "tokenizer.json"
    post = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}},
    }
    _edit(path, _set("post_processor", post))
    assert ft_data.load_tokenizer(path).encode("hi", add_bos=False) != []  # the control: a valid one loads
    _edit(path, _set("post_processor.special_tokens.<|im_start|>.ids", ["1"]))
    with pytest.raises(TokenizerFileError, match=r"post_processor\.special_tokens\['<\|im_start\|>'\]\.ids"):
        ft_data.load_tokenizer(path)
    _edit(path, _set("post_processor.single", {"a": 1}))
    with pytest.raises(TokenizerFileError, match=r"post_processor\.single: expected a list of objects"):
        ft_data.load_tokenizer(path)


CONFIG_CASES: list[tuple[str, str, str]] = [
    ("list", "[1, 2]", "expected a JSON object, got list"),
    ("bos-number", '{"bos_token": 5}', "bos_token: expected a string"),
    ("eos-no-content", '{"eos_token": {"special": true}}', "eos_token: expected a string"),
    ("add-bos-string", '{"add_bos_token": "yes"}', "add_bos_token: expected true, false or null"),
    ("template-number", '{"chat_template": 3}', "chat_template: expected a string, got int"),
    (
        "template-list",
        '{"chat_template": [{"name": "default"}]}',
        "chat_template: expected a string or a list",
    ),
    ("truncated", '{"bos_token": ', "truncated or invalid JSON"),
]


@pytest.mark.parametrize(
    ("content", "where"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_malformed_tokenizer_config_names_file_and_key(
    saved: Path, tmp_path: Path, content: str, where: str
) -> None:
    directory = _copy(saved, tmp_path / "tok")
    path = directory / "tokenizer_config.json"
    path.write_text(content)
    with pytest.raises(TokenizerFileError) as info:
        ft_data.load_tokenizer(directory)
    assert str(info.value).startswith(f"{path}: {where}"), str(info.value)


def test_not_json_at_all(saved: Path, tmp_path: Path) -> None:
    directory = _copy(saved, tmp_path / "tok")
    path = directory / "tokenizer.json"
    path.write_bytes(path.read_bytes()[:5000])  # a truncated download
    with pytest.raises(TokenizerFileError, match=rf"^{path}: truncated or invalid JSON"):
        ft_data.load_tokenizer(directory)
    path.write_text("{}")
    with pytest.raises(TokenizerFileError, match=rf"^{path}: JSON is neither"):
        ft_data.load_tokenizer(directory)
