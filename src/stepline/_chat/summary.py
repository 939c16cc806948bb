"""How a compaction summary stands in, for the model, for what it summarises.

One rule (:func:`compacted`): a summary stands in for everything before it
except the system and user messages, which stay as they were; the summary
itself is a user message at its place. So a compacted window reads the same
whether a client resends it, resends its whole history with the summary's
item in it, or continues with ``previous_response_id``. :func:`summary_request`
is the chat conversation that asks a model to write a summary.

Everything here is pure and works on plain chat-message dicts; how a summary
is sealed into a ``compaction`` item is the wire's (``protocol.compaction``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

__all__ = [
    "SUMMARY_INSTRUCTIONS",
    "SUMMARY_KEY",
    "SUMMARY_PREFIX",
    "compacted",
    "summary_message",
    "summary_request",
    "transcript",
]

#: marks, inside stepline, the chat message that holds a summary; never sent upstream
SUMMARY_KEY = "stepline:compaction"

#: how the model is asked to summarise (the conversation follows as one user message)
SUMMARY_INSTRUCTIONS = (
    "You compact a conversation between a user and an AI assistant so that the assistant "
    "can continue it without the original messages. Write a summary that keeps every fact, "
    "decision, name, number, code word, file, tool call result and open task the assistant "
    "will need, and what it was about to do next. Write only the summary."
)

#: what the model reads before a summary that replaced earlier messages
SUMMARY_PREFIX = "Summary of the earlier conversation (it replaces the messages it summarises):\n"

Message = dict[str, Any]


def summary_message(summary: str) -> Message:
    """The chat message that carries an opened summary, marked for :func:`compacted`."""
    return {"role": "user", "content": SUMMARY_PREFIX + summary, SUMMARY_KEY: True}


def compacted(messages: Sequence[Message]) -> list[Message]:
    """The messages as the model sees them: before the last summary, only system and
    user messages stay (earlier summaries are folded into it); the summary is a plain
    user message. Messages without a summary come back unchanged."""
    last = next(
        (index for index in range(len(messages) - 1, -1, -1) if messages[index].get(SUMMARY_KEY)),
        None,
    )
    if last is None:
        return list(messages)
    kept = [
        message
        for message in messages[:last]
        if message["role"] in ("system", "user") and not message.get(SUMMARY_KEY)
    ]
    summary = {key: value for key, value in messages[last].items() if key != SUMMARY_KEY}
    return [*kept, summary, *messages[last + 1 :]]


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif isinstance(part, dict):
            parts.append(f"[{part.get('type', 'attachment')}]")
    return "".join(parts)


def transcript(messages: Iterable[Message]) -> str:
    """A conversation as plain text, one turn per paragraph (tool calls and results
    included), for a model to summarise whatever its chat template takes."""
    lines: list[str] = []
    for message in messages:
        role = str(message["role"])
        text = _content_text(message.get("content"))
        if role == "tool":
            lines.append(f"[tool result {message.get('tool_call_id', '')}]\n{text}")
            continue
        if text:
            lines.append(f"[{role}]\n{text}")
        for call in message.get("tool_calls") or ():
            body = call.get("function") or call.get("custom") or {}
            arguments = body.get("arguments", body.get("input", ""))
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments).decode()
            lines.append(
                f"[{role} calls {body.get('name', '')} ({call.get('id', '')})]\n{arguments}"
            )
    return "\n\n".join(lines)


def summary_request(messages: Sequence[Message]) -> list[Message]:
    """The messages of the model call that writes a summary of ``messages``."""
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {
            "role": "user",
            "content": "The conversation to summarise:\n\n" + transcript(compacted(messages)),
        },
    ]
