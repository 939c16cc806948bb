"""The demo model as a pure function of the request body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepline.scripted import ScriptedToolCall, Turn, demo_reply


def tool(
    name: str, properties: dict[str, Any] | None = None, required: list[str] | None = None
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"type": "object", "properties": properties or {}}
    if required is not None:
        parameters["required"] = required
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


WEATHER = tool("get_weather", {"city": {"type": "string"}}, ["city"])
TIME = tool("current-time", {"zone": {"type": "string"}}, ["zone"])


def ask(text: Any, *tools: dict[str, Any]) -> Turn:
    return demo_reply(
        {"model": "demo", "messages": [{"role": "user", "content": text}], "tools": list(tools)}
    )


def first_arguments(turn: Turn) -> Mapping[str, Any] | str:
    """The arguments of the turn's first call, which must be a function tool call."""
    call = turn.tool_calls[0]
    assert isinstance(call, ScriptedToolCall)
    return call.arguments


def test_a_mentioned_tool_is_called_with_the_place_from_the_text() -> None:
    assert ask("What's the weather in New York today?", WEATHER, TIME) == Turn(
        tool_calls=(ScriptedToolCall(name="get_weather", arguments={"city": "New York"}),)
    )


def test_every_mentioned_tool_is_called_in_one_turn_in_offered_order() -> None:
    turn = ask("Tell me the time and weather in Lyon.", WEATHER, TIME)
    assert turn.tool_calls == (
        ScriptedToolCall(name="get_weather", arguments={"city": "Lyon"}),
        ScriptedToolCall(
            name="current-time", arguments={"zone": "Tell me the time and weather in Lyon."}
        ),
    )


def test_the_full_name_and_plurals_match_but_parts_of_words_do_not() -> None:
    assert ask("please run get_weather", WEATHER).tool_calls[0].name == "get_weather"
    assert ask("any weathers around?", WEATHER).tool_calls[0].name == "get_weather"
    assert first_arguments(ask("WEATHER in Oslo?", WEATHER)) == {"city": "Oslo"}
    assert not ask("sometimes I wonder", TIME).tool_calls
    # "get" is shorter than four letters, so it is not a word to match on
    assert not ask("get me something", WEATHER).tool_calls


def test_place_falls_back_to_paris_and_ignores_the_first_word() -> None:
    assert first_arguments(ask("Berlin weather please", WEATHER)) == {"city": "Paris"}
    assert first_arguments(ask("weather?", WEATHER)) == {"city": "Paris"}


def test_arguments_follow_the_schema_required_properties_only() -> None:
    search = tool(
        "search_docs",
        {
            "query": {"type": "string"},
            "location": {"type": ["string", "null"]},
            "limit": {"type": "integer"},
            "score": {"type": "number"},
            "exact": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "mode": {"type": "string", "enum": ["fast", "deep"]},
            "filter": {
                "type": "object",
                "properties": {"lang": {"type": "string"}},
                "required": ["lang"],
            },
            "optional": {"type": "string"},
        },
        ["query", "location", "limit", "score", "exact", "tags", "mode", "filter", "undeclared"],
    )
    text = "search the docs about Rome"
    assert first_arguments(ask(text, search)) == {
        "query": text,
        "location": "Rome",
        "limit": 1,
        "score": 1,
        "exact": True,
        "tags": [],
        "mode": "fast",
        "filter": {"lang": text},
    }


def test_a_tool_without_required_properties_gets_empty_arguments() -> None:
    assert first_arguments(ask("the weather", tool("weather", {"city": {"type": "string"}}))) == {}


def test_no_match_echoes_and_lists_the_offered_tools() -> None:
    assert ask("hello there", WEATHER).content == (
        'You said: "hello there". Ask me about the weather and I will call the `get_weather` tool.'
    )
    assert ask("hi", WEATHER, TIME).content == (
        'You said: "hi". Ask me about the weather or the current time and I will call the'
        " `get_weather` or `current-time` tools."
    )


def test_no_tools_at_all_invites_the_user_to_offer_some() -> None:
    content = ask("hello").content
    assert content is not None
    assert content.startswith('You said: "hello".')
    assert "Offer me some tools" in content


def test_content_parts_are_read_as_text() -> None:
    turn = ask(
        [{"type": "text", "text": "the weather"}, {"type": "text", "text": "in Oslo"}], WEATHER
    )
    assert first_arguments(turn) == {"city": "Oslo"}


def test_tool_results_are_summarised_one_line_each() -> None:
    long_output = "word " * 100
    body = {
        "model": "demo",
        "messages": [
            {"role": "user", "content": "weather and time"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "current-time", "arguments": "{}"},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "Sunny,\n21 C"},
            {"role": "tool", "tool_call_id": "call_b", "content": long_output},
            {"role": "tool", "tool_call_id": "call_zzz", "content": "?"},
        ],
    }
    lines = (demo_reply(body).content or "").split("\n")
    assert lines[0] == "Here is what the tools returned:"
    assert lines[1] == '- `get_weather` returned "Sunny, 21 C"'
    assert lines[2].startswith('- `current-time` returned "word word')
    assert lines[2].endswith('…"')
    assert len(lines[2]) < 260
    assert lines[3] == '- an unknown tool returned "?"'
    assert len(lines) == 4


def test_anything_else_gets_a_generic_answer() -> None:
    body = {"model": "demo", "messages": [{"role": "assistant", "content": "hi"}]}
    assert demo_reply(body) == Turn(content="Send me a user message and I will answer it.")
    assert demo_reply({"model": "demo", "messages": []}).content


def test_the_same_request_always_gets_the_same_turn() -> None:
    assert ask("weather in Rome", WEATHER, TIME) == ask("weather in Rome", WEATHER, TIME)
