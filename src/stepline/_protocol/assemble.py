"""Build the response object from what is stored.

The output of a response is derived from its top-level chain alone, so a
``GET`` during a run, the terminal event, and a process that resumes the run
after a crash all see the same list: each completed model call contributes
its items in the order they were streamed, and an ``mcp_call`` item (a tool
the server ran) takes its output, error and status from the tool step that
answers its ``call_id``; a completed compaction step contributes its
``compaction`` item at its place. Usage sums every model call of the response,
sub-agents included.

The response object always carries every field the Open Responses schema
requires, null where there is no value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from stepline._protocol.request import FunctionTool, McpTool, ResponseRequest
from stepline._protocol.server_items import (
    is_server_item,
    mcp_call_id,
    mcp_item_state,
    server_item_state,
)
from stepline._steps import Step, StepKind, StepState, batches

__all__ = [
    "approved_call_item",
    "mcp_call_id",
    "mcp_item_state",
    "output_items",
    "response_object",
    "sum_usage",
]


def approved_call_item(step: Step) -> dict[str, Any]:
    """The ``mcp_call`` item of a call the client approved, run before any model call."""
    approval = step.approval
    assert step.call_id is not None and approval is not None
    return {
        "id": mcp_call_id(step.call_id, step.id),
        "type": "mcp_call",
        "status": "in_progress",
        "server_label": approval.server_label,
        "name": approval.shown_name,
        "arguments": step.request["arguments"],
        "output": None,
        "error": None,
        "approval_request_id": approval.request_id,
    }


def output_items(
    chain: Sequence[Step], include: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """The output list of a response, from its top-level chain; ``include`` is the
    request's, for what hosted tools' items show."""
    items: list[dict[str, Any]] = []
    for step in sorted(chain, key=lambda s: s.sequence):
        if step.kind is StepKind.MODEL_CALL:
            break
        if step.approval is not None:
            items.append(mcp_item_state(approved_call_item(step), step))
    turns: list[tuple[int, list[dict[str, Any]]]] = [
        (step.sequence, list(step.response["items"]))
        for step in chain
        if step.kind is StepKind.COMPACTION
        and step.state is StepState.COMPLETED
        and step.response is not None
    ]
    for model_call, tool_steps in batches(chain):
        if model_call.state is not StepState.COMPLETED:
            continue
        assert model_call.response is not None
        call_of = {item: call for call, item in model_call.response["call_items"].items()}
        turn: list[dict[str, Any]] = []
        for item in model_call.response["items"]:
            if is_server_item(item) and item["id"] in call_of:
                turn.append(server_item_state(item, tool_steps.get(call_of[item["id"]]), include))
            else:
                turn.append(item)
        turns.append((model_call.sequence, turn))
    turns.sort(key=lambda entry: entry[0])
    return [*items, *(item for _, turn in turns for item in turn)]


def sum_usage(steps: Iterable[Step]) -> dict[str, Any]:
    """Usage summed over every completed model call given (all scopes), compactions
    included."""
    input_tokens = output_tokens = cached = reasoning = 0
    for step in steps:
        if step.kind is not StepKind.TOOL_CALL and step.response is not None:
            usage = step.response.get("usage") or {}
            input_tokens += int(usage.get("input_tokens", 0))
            output_tokens += int(usage.get("output_tokens", 0))
            cached += int(usage.get("cached_tokens", 0))
            reasoning += int(usage.get("reasoning_tokens", 0))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_config(request: ResponseRequest) -> dict[str, Any]:
    fmt = request.text.format.model_dump(by_alias=True, exclude_none=True)
    text: dict[str, Any] = {"format": fmt}
    if request.text.verbosity is not None:
        text["verbosity"] = request.text.verbosity
    return text


def _tool_choice(request: ResponseRequest) -> Any:
    choice = request.tool_choice
    return choice if isinstance(choice, str) else choice.model_dump()


def _echoed_tool(tool: Any) -> dict[str, Any]:
    """A request tool as the response echoes it: a function with every field the
    Open Responses schema requires (null where not sent); an MCP server without its
    headers; any other tool as it was sent."""
    if isinstance(tool, FunctionTool):
        dumped: dict[str, Any] = tool.model_dump()
        return dumped
    if isinstance(tool, McpTool):
        return tool.public()
    echoed: dict[str, Any] = tool.model_dump(exclude_none=True)
    return echoed


def response_object(
    *,
    response_id: str,
    created_at: float,
    request: ResponseRequest,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    completed_at: float | None = None,
) -> dict[str, Any]:
    """The full response object of the Open Responses schema."""
    reasoning = request.reasoning
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created_at),
        "completed_at": int(completed_at) if completed_at is not None else None,
        "status": status,
        "background": request.background,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "model": request.model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "prompt_cache_key": request.prompt_cache_key,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        "safety_identifier": request.safety_identifier,
        "service_tier": "default",
        "store": request.store,
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": _text_config(request),
        "tool_choice": _tool_choice(request),
        "tools": [_echoed_tool(tool) for tool in request.tools],
        "top_logprobs": request.top_logprobs or 0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "truncation": request.truncation,
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
        # present only when the response belongs to a conversation (optional in the SDK)
        **({"conversation": {"id": request.conversation.id}} if request.conversation else {}),
    }
