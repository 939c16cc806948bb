"""Chat messages: a stored chain of steps as the model saw it, and a transcript as one
upstream takes it.

* :func:`chain_messages` and :func:`leading_tool_messages` turn the steps of
  one scope into the messages the model saw: each model call's assistant
  message, then its tools' results, matched by ``call_id`` in the order the
  model called them; a compaction's summary at its place.
* :func:`finalize_messages` is the last word before a call goes upstream: a
  summary replaces what it summarises, reasoning goes back under the
  upstream's own key (or not at all), a tool result's images and files go
  where the upstream takes them.

Everything here is pure and works on plain chat-message dicts; inside
stepline an assistant message carries its reasoning under
:data:`REASONING_KEY`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from stepline._chat.summary import compacted, summary_message
from stepline._steps import Step, StepKind, StepState, batches

__all__ = [
    "REASONING_KEY",
    "chain_messages",
    "finalize_messages",
    "leading_tool_messages",
    "tool_error_text",
    "tool_result_text",
]

#: the key under which an assistant message carries its reasoning inside stepline;
#: :func:`finalize_messages` renames or drops it for the upstream
REASONING_KEY = "reasoning_content"

Message = dict[str, Any]


def finalize_messages(
    messages: Sequence[Message],
    *,
    reasoning_key: str | None = None,
    tool_parts: Literal["native", "user_message"] = "user_message",
) -> list[Message]:
    """The messages as one upstream takes them (the input is left untouched).

    A compaction summary replaces what it summarises (:func:`compacted`).
    Reasoning goes back under ``reasoning_key`` (or not at all). A tool result
    made of parts (an image) stays one multi-part tool message where the
    upstream takes that (``native``); otherwise the tool message keeps the
    text and the other parts follow the run of tool messages as one user
    message, so the assistant's calls are still answered first.
    """
    out: list[Message] = []
    attachments: list[dict[str, Any]] = []
    callers: list[str] = []

    def flush() -> None:
        if attachments:
            intro = "The tool call(s) " + ", ".join(callers) + " returned these attachments:"
            out.append({"role": "user", "content": [{"type": "text", "text": intro}, *attachments]})
            attachments.clear()
            callers.clear()

    for message in compacted(messages):
        role = message["role"]
        if role != "tool":
            flush()
        if role == "assistant" and (REASONING_KEY in message or reasoning_key):
            message = dict(message)
            reasoning = message.pop(REASONING_KEY, None)
            if reasoning and reasoning_key:
                message[reasoning_key] = reasoning
        elif (
            role == "tool"
            and isinstance(message.get("content"), list)
            and tool_parts == "user_message"
        ):
            parts = message["content"]
            text = "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")
            others = [p for p in parts if p.get("type") != "text"]
            if others:
                attachments.extend(others)
                callers.append(str(message["tool_call_id"]))
                text = (text + "\n" if text else "") + (
                    f"[{len(others)} attachment(s) follow in the next user message]"
                )
            message = {**message, "content": text}
        out.append(message)
    flush()
    return out


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
    their results arrive as input of the next response. A completed compaction
    step contributes its summary, at its place.
    """
    turns: list[tuple[int, list[Message]]] = [
        (step.sequence, [summary_message(str(step.response["summary"]))])
        for step in chain
        if step.kind is StepKind.COMPACTION
        and step.state is StepState.COMPLETED
        and step.response is not None
    ]
    for model_call, results in batches(chain):
        if model_call.state is not StepState.COMPLETED:
            continue
        assert model_call.response is not None
        message = dict(model_call.response["message"])
        turn = [message]
        for call in message.get("tool_calls") or ():
            done = results.get(call["id"])
            if done is not None and done.state.terminal:
                turn.append(
                    {"role": "tool", "tool_call_id": call["id"], "content": tool_result_text(done)}
                )
        turns.append((model_call.sequence, turn))
    turns.sort(key=lambda entry: entry[0])
    return [message for _, turn in turns for message in turn]


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
