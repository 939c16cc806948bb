"""Check a chat transcript before it goes to a model: a rule of the loop, as strict as
``Limits.validation`` says (the route checks a request's transcript the same way).

Strictness:

* ``lenient``: every tool result answers a call of the assistant message
  before it, once.
* ``strict``: also, no call is left unanswered when the conversation moves
  on (or ends), system messages come only first, and the first message
  after them is the user's.
* ``off``: no check.

:func:`conversation_problem` returns what is wrong, or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepline._engine.limits import Strictness

__all__ = ["Strictness", "conversation_problem"]


def conversation_problem(
    messages: Sequence[dict[str, Any]], strictness: Strictness = "strict"
) -> str | None:
    if strictness == "off":
        return None
    strict = strictness == "strict"
    open_calls: set[str] = set()
    started = False
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if strict and started:
                return f"message {index}: a system message after the conversation started"
            continue
        if role == "tool":
            call_id = message["tool_call_id"]
            if call_id not in open_calls:
                return f"No tool call found for function call output with call_id {call_id}."
            open_calls.discard(call_id)
            continue
        if strict and open_calls:
            return f"No tool output found for function call {sorted(open_calls)[0]}."
        if strict and not started and role != "user":
            return f"message {index}: the conversation must start with a user message"
        started = True
        calls = message.get("tool_calls") or () if role == "assistant" else ()
        open_calls = {call["id"] for call in calls}
    if strict and open_calls:
        return f"No tool output found for function call {sorted(open_calls)[0]}."
    return None
