"""A Responses request as the options of its Chat Completions calls.

Every request field that reaches the model is read here, once per response,
into :class:`~stepline._chat.body.ChatOptions`: sampling, ``max_output_tokens``,
``text.format`` and ``text.verbosity``, logprobs, ``prompt_cache_key``,
``safety_identifier``, ``user``, ``service_tier``, ``reasoning.effort``, and
``tool_choice`` (a forced client tool by the name the model calls it).
Tools outside ``tool_choice: allowed_tools`` are never offered.
"""

from __future__ import annotations

from typing import Any

from stepline._chat.body import ChatDialect, ChatOptions, chat_body
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.request import (
    ResponseRequest,
    ToolChoiceAllowed,
    ToolChoiceBuiltin,
    ToolChoiceFunction,
)

__all__ = ["chat_options", "chat_payload", "forced_tool"]


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


def _first_tool_choice(
    request: ResponseRequest, tools: ClientTools, server_names: frozenset[str]
) -> tuple[Any, str | None]:
    """The first call's ``tool_choice``, or why it names no tool of the response."""
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceAllowed):
        return choice.mode, None
    if isinstance(choice, ToolChoiceFunction | ToolChoiceBuiltin):
        forced = forced_tool(request, tools)
        if forced is not None:
            return forced, None
        name = getattr(choice, "name", None) or choice.type
        if name in server_names:
            return {"type": "function", "function": {"name": name}}, None
        return None, f"tool_choice names {name!r}, which no tool of this response provides"
    return choice, None


def chat_options(
    request: ResponseRequest,
    *,
    client_tools: ClientTools | None = None,
    server_names: frozenset[str] = frozenset(),
) -> ChatOptions:
    """What every model call of ``request`` sends besides its messages and tools."""
    first, error = _first_tool_choice(request, client_tools or ClientTools(), server_names)
    fields: dict[str, Any] = {}
    if request.temperature is not None:
        fields["temperature"] = request.temperature
    if request.top_p is not None:
        fields["top_p"] = request.top_p
    if request.presence_penalty is not None:
        fields["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        fields["frequency_penalty"] = request.frequency_penalty
    if request.max_output_tokens is not None:
        fields["max_tokens"] = request.max_output_tokens
    fmt = request.text.format
    if fmt.type == "json_schema":
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt.type == "json_object":
        fields["response_format"] = {"type": "json_object"}
    if request.text.verbosity is not None:
        fields["verbosity"] = request.text.verbosity
    if request.top_logprobs or request.includes("message.output_text.logprobs"):
        fields["logprobs"] = True
        if request.top_logprobs:
            fields["top_logprobs"] = request.top_logprobs
    for name in ("prompt_cache_key", "safety_identifier", "user", "service_tier"):
        value = getattr(request, name)
        if value is not None:
            fields[name] = value
    return ChatOptions(
        first_tool_choice=first,
        tool_choice_error=error,
        later_tool_choice="none" if request.tool_choice == "none" else "auto",
        parallel_tool_calls=request.parallel_tool_calls,
        fields=fields,
        reasoning_effort=request.reasoning.effort if request.reasoning is not None else None,
    )


def chat_payload(
    request: ResponseRequest,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    first_call: bool,
    dialect: ChatDialect | None = None,
    client_tools: ClientTools | None = None,
    server_names: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One call's body straight from a request (a call the loop does not make)."""
    options = chat_options(request, client_tools=client_tools, server_names=server_names)
    return chat_body(
        options,
        model=model,
        messages=messages,
        tools=tools,
        first_call=first_call,
        dialect=dialect or ChatDialect(),
    )
