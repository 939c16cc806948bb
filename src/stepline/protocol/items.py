"""Translate between Responses items and Chat Completions messages.

Two directions meet here:

* inward: request input items and stored step chains become the ``messages``
  of a Chat Completions call. Tool results are always keyed by the model's
  ``call_id`` (never by position), and consecutive ``function_call`` items
  merge into one assistant message, as Chat Completions requires.
* outward: the output item shapes (message, reasoning, function_call for the
  client's tools, mcp_call for tools the server ran).

Everything here is pure and works on plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from stepline.engine.steps import Step, StepKind, StepState, batches
from stepline.protocol.request import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputItem,
    McpApprovalResponseItem,
    McpCallItem,
    MessageItem,
    OutputText,
    Refusal,
)

__all__ = [
    "SERVER_LABEL",
    "chain_messages",
    "input_messages",
    "message_item",
    "tool_error_text",
]

#: ``server_label`` of the mcp_call items that show tools the server ran
SERVER_LABEL = "stepline"

Message = dict[str, Any]


def _content(parts: str | Sequence[Any]) -> str | list[dict[str, Any]]:
    """Text-only content collapses to a string, the form every upstream accepts."""
    if isinstance(parts, str):
        return parts
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, InputImage):
            chat_parts.append(
                {"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}}
            )
        elif isinstance(part, Refusal):
            chat_parts.append({"type": "text", "text": part.refusal})
        else:
            chat_parts.append({"type": "text", "text": str(getattr(part, "text", ""))})
    if all(part["type"] == "text" for part in chat_parts):
        return "".join(str(part["text"]) for part in chat_parts)
    return chat_parts


def _assistant_with_calls(messages: list[Message]) -> Message:
    """The assistant message that a function_call item belongs to (made if needed)."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        return last
    message: Message = {"role": "assistant", "content": None}
    messages.append(message)
    return message


def _add_call(messages: list[Message], call_id: str, name: str, arguments: str) -> None:
    message = _assistant_with_calls(messages)
    message.setdefault("tool_calls", []).append(
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    )


#: what the model sees for a held call the client refused
REFUSED = "The user refused this tool call."


def input_messages(
    items: Iterable[InputItem], approvals: Mapping[str, str] | None = None
) -> list[Message]:
    """Chat messages for request input items, in order.

    ``approvals`` maps an ``mcp_approval_request`` id of the previous
    response to the call it held: a refusal answers that call here; an
    approved call is run by the response and answered by its tool step.
    """
    messages: list[Message] = []
    for item in items:
        if isinstance(item, McpApprovalResponseItem):
            call_id = (approvals or {}).get(item.approval_request_id)
            if call_id is not None and not item.approve:
                reason = f" Reason: {item.reason}" if item.reason else ""
                messages.append(
                    {"role": "tool", "tool_call_id": call_id, "content": REFUSED + reason}
                )
            continue
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            content = _content(item.content)
            if (
                role == "assistant"
                and messages
                and messages[-1]["role"] == "assistant"
                and (messages[-1].get("content") is None and not messages[-1].get("tool_calls"))
            ):
                messages[-1]["content"] = content
            else:
                messages.append({"role": role, "content": content})
        elif isinstance(item, FunctionCallItem):
            _add_call(messages, item.call_id, item.name, item.arguments)
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text_of(item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        elif isinstance(item, McpCallItem):
            call_id = item.id or item.name
            _add_call(messages, call_id, item.name, item.arguments)
            result = item.output if item.output is not None else tool_error_text(item.error)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result or ""})
        # reasoning items carry nothing a Chat Completions upstream takes back
    return messages


def _text_of(parts: Sequence[Any]) -> str:
    return "".join(p.text for p in parts if isinstance(p, OutputText) or hasattr(p, "text"))


def tool_error_text(error: Any) -> str:
    """The text a model sees for a failed tool call."""
    if error is None:
        return ""
    if isinstance(error, dict):
        message = error.get("message")
        if message:
            return f"Error: {message}"
        content = error.get("content")
        if isinstance(content, list):
            return "Error: " + "".join(str(part.get("text", "")) for part in content)
    return f"Error: {error}"


def chain_messages(chain: Sequence[Step]) -> list[Message]:
    """Chat messages for the completed steps of one scope, in transcript order.

    Each model call contributes its assistant message; the tool steps after it
    contribute one tool message each, in the order the model called them,
    matched by ``call_id``. Client-side calls have no step and no message here:
    their results arrive as input of the next response.
    """
    messages: list[Message] = []
    for model_call, results in batches(chain):
        if model_call.state is not StepState.COMPLETED:
            continue
        assert model_call.response is not None
        message = dict(model_call.response["message"])
        message.pop("reasoning_content", None)
        messages.append(message)
        for call in message.get("tool_calls") or ():
            done = results.get(call["id"])
            if done is not None and done.state.terminal:
                messages.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": tool_result_text(done)}
                )
    return messages


def leading_tool_messages(chain: Sequence[Step]) -> list[Message]:
    """Tool messages of the steps a chain runs before its first model call.

    Those are calls the client approved; they answer the previous response's
    last assistant message.
    """
    messages: list[Message] = []
    for step in sorted(chain, key=lambda s: s.sequence):
        if step.kind is StepKind.MODEL_CALL:
            break
        if step.call_id is not None and step.state.terminal:
            messages.append(
                {"role": "tool", "tool_call_id": step.call_id, "content": tool_result_text(step)}
            )
    return messages


def tool_result_text(step: Step) -> str:
    """What the model sees as the result of a finished tool step."""
    if step.state is StepState.COMPLETED and step.response is not None:
        return str(step.response.get("output", ""))
    return tool_error_text(step.error or {"message": f"tool call {step.state.value}"})


def message_item(item_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def dumps_arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
