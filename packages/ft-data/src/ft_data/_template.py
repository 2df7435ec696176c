"""Jinja chat templates rendered the way Hugging Face transformers renders them.

Chat templates are untrusted code from model repositories, so they run in Jinja's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` / ``lstrip_blocks`` and the ``loopcontrols``
extension, and see the same extra names as in transformers: ``raise_exception``, ``strftime_now``,
a ``tojson`` filter that does not HTML-escape (``ensure_ascii``, ``indent``, ``separators``,
``sort_keys``), a ``dict`` constructor and a ``namespace`` that refuses underscore attributes. The
template variables are ``messages``, ``tools``, ``documents``, ``add_generation_prompt``, the
special-token strings (``bos_token``, ``eos_token``, ``pad_token``) and any extra
keyword (``enable_thinking``, ``date_string``...). ``{% generation %}`` blocks (used by a few
templates to mark assistant text) render their body unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ft_data._messages import REASONING_KEYS, Message
from ft_data._protocol import Tokenizer
from ft_data.errors import ChatTemplateError

__all__ = [
    "BUILTIN_TEMPLATES",
    "apply_chat_template",
    "load_chat_template",
    "message_dicts",
    "resolve_template",
]

_CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content }}"
    "{%- for call in message.tool_calls | default([]) %}"
    "{{- '\\n<tool_call>\\n' + call.function | tojson + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message.role == 'tool' else message.role %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message.content | trim }}"
    "{%- for call in message.tool_calls | default([]) %}"
    "{{- call.function | tojson }}"
    "{%- endfor %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

_ALPACA = (
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}{{- message.content + '\\n\\n' }}"
    "{%- elif message.role == 'user' %}{{- '### Instruction:\\n' + message.content + '\\n\\n### Response:\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- message.content + eos_token }}"
    "{%- if not loop.last %}{{- '\\n\\n' }}{%- endif %}"
    "{%- else %}{{- raise_exception('The alpaca template has no ' + message.role + ' role') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

BUILTIN_TEMPLATES: Mapping[str, str] = {"chatml": _CHATML, "llama3": _LLAMA3, "alpaca": _ALPACA}
"""Templates for models that ship none, selected by name (``template="chatml"``)."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: parsed so such templates load, rendered as its body."""

    tags = {"generation"}  # noqa: RUF012 - jinja reads this class attribute

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names so a template cannot reach Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


class _DictFactory:
    """``dict(...)`` inside templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_DictFactory(),
        namespace=_Namespace,
    )
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template line {exc.lineno}: syntax error ({exc.message})") from exc


def load_chat_template(path: str | os.PathLike[str]) -> str:
    """Read a chat template from a ``.jinja`` file, a ``tokenizer_config.json`` (``chat_template`` as a
    string or as a list of named templates, ``default`` first) or a GGUF file (``tokenizer.chat_template``).

    Raises:
        ChatTemplateError: The file has no template or cannot be read.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            if (p / name).is_file():
                return load_chat_template(p / name)
        raise ChatTemplateError(f"{p}: no chat_template.jinja or tokenizer_config.json")
    try:
        head = p.open("rb").read(4)
        if head == b"GGUF":
            from ft_data._gguf import read_gguf_metadata

            meta = read_gguf_metadata(p, prefix="tokenizer.chat_template")
            value = meta.get("tokenizer.chat_template")
            if not isinstance(value, str):
                raise ChatTemplateError(f"{p}: GGUF has no tokenizer.chat_template")
            return value
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ChatTemplateError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if p.suffix != ".json":
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"{p}: invalid JSON ({exc.msg})") from exc
    value = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if not isinstance(value, str):
        raise ChatTemplateError(f"{p}: no 'chat_template' string")
    return value


def resolve_template(template: str | None, tokenizer: Tokenizer) -> tuple[str, str]:
    """(name, Jinja source) of `template`: ``None`` is the tokenizer's own, a built-in name
    (``chatml``, ``llama3``, ``alpaca``), a path to a template file, or Jinja source itself."""
    if template is None:
        own = tokenizer.chat_template
        if not own:
            names = ", ".join(BUILTIN_TEMPLATES)
            raise ChatTemplateError(
                f"tokenizer has no chat_template; pass template= one of {names} or a Jinja string"
            )
        return "tokenizer", own
    if template in BUILTIN_TEMPLATES:
        return template, BUILTIN_TEMPLATES[template]
    if "{{" in template or "{%" in template:
        return "inline", template
    if Path(template).exists():
        return template, load_chat_template(template)
    raise ChatTemplateError(f"template {template!r}: not a built-in name, an existing file or Jinja source")


def special_token_strings(tokenizer: Tokenizer) -> dict[str, str]:
    """``bos_token`` / ``eos_token`` / ``pad_token`` strings for the template (as transformers passes them)."""
    out: dict[str, str] = {}
    for key, tid in (
        ("bos_token", tokenizer.bos_id),
        ("eos_token", tokenizer.eos_id),
        ("pad_token", tokenizer.pad_id),
    ):
        if tid is not None:
            out[key] = tokenizer.decode([tid])
    return out


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tokens: Mapping[str, str],
    add_generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None,
    template_kwargs: Mapping[str, Any],
    name: str = "template",
) -> str:
    """Render a compiled template; Jinja errors become `ChatTemplateError` naming the template."""
    try:
        return _compile(source).render(
            messages=list(messages),
            tools=None if tools is None else list(tools),
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**tokens, **template_kwargs},
        )
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template {name}: {exc}") from exc


def apply_chat_template(
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    tokenizer: Tokenizer,
    template: str | None = None,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **template_kwargs: Any,
) -> str:
    """Render `messages` with a chat template, as transformers' ``apply_chat_template(tokenize=False)``.

    Args:
        messages: `Message` objects or OpenAI-style dicts.
        tokenizer: Supplies the default template and the special-token strings.
        template: ``None`` (the tokenizer's own), a built-in name, a template file or Jinja source.
        add_generation_prompt: Append the header that starts an assistant turn (for generation).
        tools: JSON schemas of the functions the model may call.
        **template_kwargs: Extra template variables (``enable_thinking``, ``date_string``...).
    """
    name, source = resolve_template(template, tokenizer)
    dicts = message_dicts(messages)
    return render(
        source,
        dicts,
        tokens=special_token_strings(tokenizer),
        add_generation_prompt=add_generation_prompt,
        tools=tools,
        template_kwargs=template_kwargs,
        name=name,
    )


def message_dicts(messages: Sequence[Message | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The dicts templates see, prepared as transformers prepares them: keys set to ``None`` dropped
    (templates test ``is defined``), and a reasoning given under ``reasoning_content``, ``thinking``
    or ``reasoning`` also available as ``reasoning_content`` and ``thinking``."""
    out = []
    for m in messages:
        d = m.to_dict() if isinstance(m, Message) else {k: v for k, v in m.items() if v is not None}
        reasoning = next((d[k] for k in REASONING_KEYS if d.get(k) is not None), None)
        out.append(d if reasoning is None else {"thinking": reasoning, **d, "reasoning_content": reasoning})
    return out
