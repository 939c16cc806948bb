"""The demo model: how the scripted server answers a model name that has no script.

It exists so that someone trying stepline without a real model still sees the
whole agent loop: a user message that mentions an offered tool makes the demo
call it (every mentioned tool at once, as parallel calls), and the follow-up
call with the tool results gets a text that quotes them.

``demo_reply`` is a pure function of the Chat Completions request body: no
I/O, no clock, no randomness, so the same request always gets the same turn.
Pacing and call ids are the server's business, not this module's.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from stepline.scripted._script import ScriptedToolCall, Turn

__all__ = ["demo_reply", "message_text"]

#: longest tool output quoted back, in characters
QUOTE_LIMIT = 200
#: property names that ask for a place rather than free text
_PLACE_WORDS = ("city", "location", "place", "town")
_FALLBACK_PLACE = "Paris"
_STRIP = string.punctuation + "¿¡“”‘’«»"


def demo_reply(request: Mapping[str, Any]) -> Turn:
    """The demo's answer to one Chat Completions request body."""
    messages = [m for m in request.get("messages") or () if isinstance(m, Mapping)]
    last_role = messages[-1].get("role") if messages else None
    if last_role == "tool":
        return Turn(content=_summarise_tool_results(messages))
    if last_role != "user":
        return Turn(content="Send me a user message and I will answer it.")
    text = message_text(messages[-1])
    tools = _offered_tools(request.get("tools"))
    calls = tuple(
        ScriptedToolCall(name=name, arguments=_arguments(parameters, text))
        for name, parameters in tools
        if _mentions(text, name)
    )
    if calls:
        return Turn(tool_calls=calls)
    return Turn(content=_invitation(text, [name for name, _ in tools]))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _offered_tools(tools: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, parameters schema) of each function tool, in the order offered."""
    offered: list[tuple[str, Mapping[str, Any]]] = []
    for tool in tools if isinstance(tools, Sequence) else ():
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function", tool)
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name:
            parameters = function.get("parameters")
            offered.append((name, parameters if isinstance(parameters, Mapping) else {}))
    return offered


def _name_words(name: str) -> list[str]:
    words = [word for word in re.split(r"[_\-]", name.lower()) if len(word) >= 4]
    return [name.lower(), *words]


def _mentions(text: str, name: str) -> bool:
    lowered = text.lower()
    for word in _name_words(name):
        # whole words only ("time" must not match "sometimes"); plurals count
        pattern = rf"(?<![a-z0-9]){re.escape(word)}(?:e?s)?(?![a-z0-9])"
        if re.search(pattern, lowered):
            return True
    return False


def _arguments(schema: Mapping[str, Any], text: str) -> dict[str, Any]:
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, Mapping) or not isinstance(required, Sequence):
        return {}
    return {
        name: _value(name, properties[name], text)
        for name in required
        if isinstance(name, str) and isinstance(properties.get(name), Mapping)
    }


def _value(name: str, schema: Mapping[str, Any], text: str) -> Any:
    enum = schema.get("enum")
    if isinstance(enum, Sequence) and not isinstance(enum, str) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, Sequence) and not isinstance(kind, str):
        kind = next((k for k in kind if k != "null"), None)
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _arguments(schema, text)
    if any(word in name.lower() for word in _PLACE_WORDS):
        return _place(text)
    return text


def _place(text: str) -> str:
    """The first run of Capitalised words after the first word ("New York")."""
    words = [word.strip(_STRIP) for word in text.split()[1:]]
    run: list[str] = []
    for word in words:
        if len(word) > 1 and word[0].isupper():
            run.append(word)
        elif run:
            break
    return " ".join(run) or _FALLBACK_PLACE


def _invitation(text: str, tool_names: list[str]) -> str:
    said = f'You said: "{_shorten(text)}".'
    if not tool_names:
        return (
            f"{said} I am the stepline demo model. Offer me some tools and mention one"
            " by name, and I will call it."
        )
    topics = " or ".join(_topic(name) for name in tool_names)
    names = " or ".join(f"`{name}`" for name in tool_names)
    noun = "tool" if len(tool_names) == 1 else "tools"
    return f"{said} Ask me about {topics} and I will call the {names} {noun}."


def _topic(name: str) -> str:
    words = _name_words(name)[1:]
    return f"the {' '.join(words)}" if words else name


def _summarise_tool_results(messages: list[Mapping[str, Any]]) -> str:
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    names = _tool_names(messages[:start])
    lines = ["Here is what the tools returned:"]
    for message in messages[start:]:
        call_id = message.get("tool_call_id")
        name = names.get(call_id) if isinstance(call_id, str) else None
        label = f"`{name}`" if name else "an unknown tool"
        lines.append(f'- {label} returned "{_shorten(message_text(message))}"')
    return "\n".join(lines)


def _tool_names(messages: list[Mapping[str, Any]]) -> dict[str, str]:
    """tool_call_id -> tool name, from the assistant messages that made the calls."""
    names: dict[str, str] = {}
    for message in messages:
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        for call in calls if isinstance(calls, Sequence) else ():
            if not isinstance(call, Mapping):
                continue
            function = call.get("function")
            if isinstance(call.get("id"), str) and isinstance(function, Mapping):
                names[call["id"]] = str(function.get("name"))
    return names


def _shorten(text: str) -> str:
    """One line, at most QUOTE_LIMIT characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= QUOTE_LIMIT else flat[: QUOTE_LIMIT - 1] + "…"
