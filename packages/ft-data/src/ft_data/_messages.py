"""Chat messages and converters from the common dataset layouts.

A conversation is a list of `Message` (OpenAI's chat format: roles ``system``, ``user``,
``assistant``, ``tool``; assistant messages may carry tool calls, tool messages answer them). The
converters accept OpenAI ``messages``, ShareGPT ``conversations`` (``from``/``value``), Alpaca
(instruction / input / output), plain input/output pairs and chosen/rejected preference pairs, and
check role order so that a broken chat fails at loading, not silently inside a template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ft_data.errors import MessageError

__all__ = [
    "Message",
    "Role",
    "ToolCall",
    "convert_openai",
    "from_alpaca",
    "from_input_output",
    "from_openai",
    "from_preference",
    "from_sharegpt",
    "validate_roles",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
REASONING_KEYS: tuple[str, ...] = ("reasoning_content", "thinking", "reasoning")
SHAREGPT_ROLES: Mapping[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function_response": "tool",
    "observation": "tool",
}


@dataclass(frozen=True)
class ToolCall:
    """A function call made by the assistant.

    Attributes:
        name: Function name.
        arguments: Decoded JSON arguments (templates render them with ``tojson``).
        id: Call id (some templates require one, e.g. Mistral's 9 characters).
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """OpenAI layout: ``{"type": "function", "id": ..., "function": {"name", "arguments"}}``."""
        out: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": dict(self.arguments)},
        }
        if self.id is not None:
            out["id"] = self.id
        return out


@dataclass(frozen=True)
class Message:
    """One chat message.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: Text ("" for an assistant message that only calls tools).
        tool_calls: Calls made by an assistant message.
        tool_call_id: For a ``tool`` message, the id of the call it answers.
        name: For a ``tool`` message, the function name (some templates print it).
        reasoning: An assistant's reasoning, given to templates as ``reasoning_content`` and
            ``thinking`` (the names transformers fills).
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    reasoning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The dict a Jinja chat template sees (keys that are unset are left out, as transformers does)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        if self.reasoning is not None:
            out["thinking"] = out["reasoning_content"] = self.reasoning
        return out


def _tool_call(raw: Any, where: str) -> ToolCall:
    if not isinstance(raw, Mapping):
        raise MessageError(f"{where}: tool call must be an object, got {type(raw).__name__}")
    fn = raw.get("function", raw)
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise MessageError(f"{where}: tool call without a function name")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise MessageError(f"{where}: tool call arguments are not JSON ({exc.msg})") from exc
    if not isinstance(args, Mapping):
        raise MessageError(f"{where}: tool call arguments must be an object")
    call_id = raw.get("id")
    return ToolCall(name=fn["name"], arguments=dict(args), id=None if call_id is None else str(call_id))


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)  # OpenAI content parts, text only
    raise MessageError(f"{where}: content must be a string, got {type(value).__name__}")


def from_openai(messages: Any, *, where: str = "messages") -> list[Message]:
    """Convert OpenAI ``[{"role", "content", "tool_calls"?, "tool_call_id"?}]`` and check role order.

    Args:
        messages: The list of message objects.
        where: Prefix for error messages (file, row and field), so a bad row is easy to find.
    """
    out = convert_openai(messages, where=where)
    validate_roles(out, where=where)
    return out


def convert_openai(messages: Any, *, where: str = "messages") -> list[Message]:
    """`from_openai` without the role-order check, for parts of a conversation (a preference answer
    alone is ``[assistant]``); the caller checks the order of the whole conversation."""
    if not isinstance(messages, list):
        raise MessageError(f"{where}: expected a list of messages, got {type(messages).__name__}")
    out = []
    for i, raw in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise MessageError(f"{at}: message must be an object, got {type(raw).__name__}")
        role = raw.get("role")
        if role not in ROLES:
            raise MessageError(f"{at}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        calls = tuple(_tool_call(c, f"{at}.tool_calls") for c in raw.get("tool_calls") or ())
        out.append(
            Message(
                role=role,
                content=_text(raw.get("content"), f"{at}.content"),
                tool_calls=calls,
                tool_call_id=raw.get("tool_call_id"),
                name=raw.get("name"),
                reasoning=next((raw[k] for k in REASONING_KEYS if isinstance(raw.get(k), str)), None),
            )
        )
    return out


def from_sharegpt(
    conversations: Any, *, system: str | None = None, where: str = "conversations"
) -> list[Message]:
    """Convert ShareGPT ``[{"from": "human"|"gpt"|"system"|..., "value": ...}]``.

    Args:
        conversations: The list of turns.
        system: A system prompt to put first when the conversation has none.
        where: Prefix for error messages.
    """
    if not isinstance(conversations, list):
        raise MessageError(f"{where}: expected a list of turns, got {type(conversations).__name__}")
    out: list[Message] = []
    for i, raw in enumerate(conversations):
        at = f"{where}[{i}]"
        if not isinstance(raw, Mapping):
            raise MessageError(f"{at}: turn must be an object, got {type(raw).__name__}")
        speaker = raw.get("from")
        role = SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise MessageError(
                f"{at}.from: unknown speaker {speaker!r} (expected one of {', '.join(SHAREGPT_ROLES)})"
            )
        out.append(Message(role=role, content=_text(raw.get("value"), f"{at}.value")))  # type: ignore[arg-type]
    if system is not None and (not out or out[0].role != "system"):
        out.insert(0, Message("system", system))
    validate_roles(out, where=where)
    return out


def from_input_output(prompt: str, response: str, *, system: str | None = None) -> list[Message]:
    """A single exchange: optional system, user `prompt`, assistant `response`."""
    head = [Message("system", system)] if system else []
    return [*head, Message("user", prompt), Message("assistant", response)]


def from_alpaca(instruction: str, input: str, output: str, *, system: str | None = None) -> list[Message]:
    """Alpaca rows: the instruction and its (optional) input become one user message."""
    prompt = f"{instruction}\n\n{input}" if input else instruction
    return from_input_output(prompt, output, system=system)


def from_preference(
    prompt: Sequence[Message], chosen: Sequence[Message], rejected: Sequence[Message], *, where: str = "row"
) -> tuple[list[Message], list[Message]]:
    """Two conversations sharing `prompt`, ending with the chosen and the rejected answer.

    Args:
        prompt: The shared turns (may be empty when `chosen` / `rejected` hold whole conversations).
        chosen: The preferred continuation (or whole conversation).
        rejected: The dispreferred one.
        where: Prefix for error messages.
    """
    pair = ([*prompt, *chosen], [*prompt, *rejected])
    for name, chat in zip(("chosen", "rejected"), pair):
        validate_roles(chat, where=f"{where}.{name}")
        if chat[-1].role != "assistant":
            raise MessageError(f"{where}.{name}: must end with an assistant message")
    return pair


def validate_roles(messages: Sequence[Message], *, where: str = "messages") -> None:
    """Check role order: system only first, then user and assistant alternating, tool messages only
    right after an assistant message with tool calls (or another tool message).

    Raises:
        MessageError: Naming the message index and its role.
    """
    if not messages:
        raise MessageError(f"{where}: empty conversation")
    prev: Message | None = None
    for i, msg in enumerate(messages):
        at = f"{where}[{i}].role"
        if msg.role == "system":
            if i != 0:
                raise MessageError(f"{at}: 'system' is allowed only as the first message")
        elif msg.role == "user":
            if prev is not None and prev.role == "user":
                raise MessageError(f"{at}: two 'user' messages in a row")
            if prev is not None and prev.role == "tool":
                raise MessageError(f"{at}: 'user' after a tool result; the assistant must answer it first")
        elif msg.role == "assistant":
            if prev is None or prev.role == "system":
                raise MessageError(f"{at}: 'assistant' before any 'user' message")
            if prev.role == "assistant":
                raise MessageError(f"{at}: two 'assistant' messages in a row")
            if not msg.content and not msg.tool_calls:
                raise MessageError(
                    f"{where}[{i}].content: assistant message with no content and no tool calls"
                )
        elif prev is None or not (prev.role == "tool" or (prev.role == "assistant" and prev.tool_calls)):
            # role == "tool"
            raise MessageError(f"{at}: 'tool' must follow an assistant message with tool calls")
        prev = msg
