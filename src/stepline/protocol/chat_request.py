"""A Responses request, at one step of the loop, as a Chat Completions request body.

``tool_choice`` binds the first model call of a response only; follow-up
calls after tool results use ``auto`` (``none`` stays ``none``), otherwise a
forced choice would call the tool forever. Tools outside
``tool_choice: allowed_tools`` are never offered.
"""

from __future__ import annotations

from typing import Any

from stepline.protocol.request import ResponseRequest, ToolChoiceAllowed, ToolChoiceFunction

__all__ = ["chat_payload", "client_tool_definitions"]


def client_tool_definitions(
    request: ResponseRequest, allowed: frozenset[str] | None
) -> list[dict[str, Any]]:
    """The request's own function tools, as Chat Completions tools."""
    tools: list[dict[str, Any]] = []
    for tool in request.function_tools():
        if allowed is not None and tool.name not in allowed:
            continue
        function: dict[str, Any] = {
            "name": tool.name,
            "parameters": tool.parameters or {"type": "object", "properties": {}},
        }
        if tool.description:
            function["description"] = tool.description
        if tool.strict is not None:
            function["strict"] = tool.strict
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(request: ResponseRequest, *, first_call: bool) -> Any:
    choice = request.tool_choice
    if choice == "none":
        return "none"
    if not first_call:
        return "auto"
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, ToolChoiceAllowed):
        return choice.mode
    return choice


def chat_payload(
    request: ResponseRequest,
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    first_call: bool,
    reasoning_effort: bool = False,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        payload["tools"] = tools
        payload["tool_choice"] = _tool_choice(request, first_call=first_call)
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
    if reasoning_effort and request.reasoning is not None and request.reasoning.effort:
        payload["reasoning_effort"] = request.reasoning.effort
    return payload
