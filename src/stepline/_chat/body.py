"""The body of one Chat Completions call: a response's options, in one upstream's dialect.

A response asks the same of every model call it makes — sampling,
``max_tokens``, ``response_format``, logprobs, ``prompt_cache_key``... —
so the wire reads those once into :class:`ChatOptions`, and each call adds
only what changes: its messages, its tools and which ``tool_choice`` binds.

``tool_choice`` binds the first model call of a response only; follow-up
calls after tool results use ``auto`` (``none`` stays ``none``), otherwise a
forced choice would call the tool forever. A first call whose choice names no
tool of the response fails when it is built, as it did before it was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stepline._chat.messages import finalize_messages
from stepline.errors import InvalidRequest

__all__ = ["ChatDialect", "ChatOptions", "chat_body"]


@dataclass(frozen=True, kw_only=True)
class ChatDialect:
    """What one upstream takes beyond plain Chat Completions (its config says)."""

    #: forward ``reasoning.effort`` as ``reasoning_effort``
    reasoning_effort: bool = False
    #: custom tools as Chat Completions custom tools, else as one-string functions
    native_custom: bool = False
    #: where a tool result's images and files go: the tool message, or a user message after
    tool_parts: Literal["native", "user_message"] = "user_message"
    #: the field earlier reasoning is sent back in, or None to leave it out
    reasoning_replay: str | None = None
    #: Chat Completions ``file`` parts for files that are not text
    file_parts: bool = False


@dataclass(frozen=True, kw_only=True)
class ChatOptions:
    """What every model call of one scope sends besides its messages and tools."""

    #: the ``tool_choice`` of the scope's first model call (when it offers tools)
    first_tool_choice: Any = "auto"
    #: why the first call's ``tool_choice`` cannot be sent (it names no tool offered)
    tool_choice_error: str | None = None
    #: the ``tool_choice`` of the calls after it: ``none`` stays ``none``, else ``auto``
    later_tool_choice: Literal["auto", "none"] = "auto"
    parallel_tool_calls: bool = True
    #: the request's fields as Chat Completions names them, in the order they are sent
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: ``reasoning.effort``, sent only to an upstream whose dialect takes it
    reasoning_effort: str | None = None


def chat_body(
    options: ChatOptions,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    first_call: bool,
    dialect: ChatDialect = ChatDialect(),
) -> dict[str, Any]:
    """The Chat Completions request body of one model call."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": finalize_messages(
            messages, reasoning_key=dialect.reasoning_replay, tool_parts=dialect.tool_parts
        ),
    }
    if tools:
        payload["tools"] = tools
        if not first_call:
            payload["tool_choice"] = options.later_tool_choice
        elif options.tool_choice_error is not None:
            raise InvalidRequest(options.tool_choice_error, param="tool_choice")
        else:
            payload["tool_choice"] = options.first_tool_choice
        payload["parallel_tool_calls"] = options.parallel_tool_calls
    payload.update(options.fields)
    if dialect.reasoning_effort and options.reasoning_effort:
        payload["reasoning_effort"] = options.reasoning_effort
    return payload
