"""A Responses request, at one step of the loop, as a Chat Completions request body.

``tool_choice`` binds the first model call of a response only; follow-up
calls after tool results use ``auto`` (``none`` stays ``none``), otherwise a
forced choice would call the tool forever. Tools outside
``tool_choice: allowed_tools`` are never offered.

Every request field that reaches the model is forwarded here, in the
upstream's :class:`ChatDialect`: sampling, ``max_output_tokens``,
``text.format`` and ``text.verbosity``, logprobs, ``prompt_cache_key``,
``safety_identifier``, ``user``, ``service_tier``, ``reasoning.effort``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from stepline.errors import InvalidRequest
from stepline.protocol.client_tools import ClientTools
from stepline.protocol.items import finalize_messages
from stepline.protocol.request import (
    ResponseRequest,
    ToolChoiceAllowed,
    ToolChoiceBuiltin,
    ToolChoiceFunction,
)

__all__ = ["ChatDialect", "chat_payload", "forced_tool"]


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


def forced_tool(request: ResponseRequest, tools: ClientTools) -> dict[str, Any] | None:
    """The Chat Completions ``tool_choice`` of a request that forces one client tool.

    None when it forces none; InvalidRequest when it forces a tool nobody runs.
    """
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction):
        tool = tools.forced(choice.name, choice.type)
    elif isinstance(choice, ToolChoiceBuiltin):
        kind = "computer" if choice.type == "computer_use_preview" else choice.type
        tool = tools.forced(None, kind)
    else:
        return None
    if tool is None:
        return None
    if tool.native:
        return {"type": "custom", "custom": {"name": tool.chat_name}}
    return {"type": "function", "function": {"name": tool.chat_name}}


def _tool_choice(
    request: ResponseRequest, tools: ClientTools, server_names: frozenset[str], *, first_call: bool
) -> Any:
    choice = request.tool_choice
    if choice == "none":
        return "none"
    if not first_call:
        return "auto"
    if isinstance(choice, ToolChoiceAllowed):
        return choice.mode
    if isinstance(choice, ToolChoiceFunction | ToolChoiceBuiltin):
        forced = forced_tool(request, tools)
        if forced is not None:
            return forced
        name = getattr(choice, "name", None) or choice.type
        if name in server_names:
            return {"type": "function", "function": {"name": name}}
        raise InvalidRequest(
            f"tool_choice names {name!r}, which no tool of this response provides",
            param="tool_choice",
        )
    return choice


def chat_payload(
    request: ResponseRequest,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    first_call: bool,
    dialect: ChatDialect = ChatDialect(),
    client_tools: ClientTools | None = None,
    server_names: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": finalize_messages(
            messages, reasoning_key=dialect.reasoning_replay, tool_parts=dialect.tool_parts
        ),
    }
    if tools:
        payload["tools"] = tools
        payload["tool_choice"] = _tool_choice(
            request, client_tools or ClientTools(), server_names, first_call=first_call
        )
        payload["parallel_tool_calls"] = request.parallel_tool_calls
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.presence_penalty is not None:
        payload["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        payload["frequency_penalty"] = request.frequency_penalty
    if request.max_output_tokens is not None:
        payload["max_tokens"] = request.max_output_tokens
    fmt = request.text.format
    if fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        payload["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt.type == "json_object":
        payload["response_format"] = {"type": "json_object"}
    if request.text.verbosity is not None:
        payload["verbosity"] = request.text.verbosity
    if request.top_logprobs or request.includes("message.output_text.logprobs"):
        payload["logprobs"] = True
        if request.top_logprobs:
            payload["top_logprobs"] = request.top_logprobs
    for name in ("prompt_cache_key", "safety_identifier", "user", "service_tier"):
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    if dialect.reasoning_effort and request.reasoning is not None and request.reasoning.effort:
        payload["reasoning_effort"] = request.reasoning.effort
    return payload
