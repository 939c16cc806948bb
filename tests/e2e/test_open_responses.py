"""The rules of the Open Responses compliance suite (2026-04-24), held by stepline's own tests.

The specification's suite has 17 checks (``docs/compliance.md`` maps each to
the tests that hold it). Each test here sends what its check sends, over a
real socket, and checks every payload against the specification's shapes
(:mod:`tests.e2e._open_responses`) as well as what the check asserts; where
an existing test already holds the rule (the WebSocket cache rules in
``test_websocket.py``), the docs name it instead of repeating it.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from stepline.scripted import Script
from tests.durability.conftest import message_events
from tests.e2e._codex import png
from tests.e2e._open_responses import compaction_problems, event_problems, response_problems
from tests.e2e.conftest import Stack, read_sse

# protocol rules, not storage: SQLite is enough
pytestmark = pytest.mark.parametrize("stack_factory", ["sqlite"], indirect=True)

#: the longest a WebSocket receive may wait
RECEIVE_SECONDS = 10.0

_TERMINAL = ("response.completed", "response.failed", "response.incomplete")

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


def _user(content: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": content}


async def _create(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    reply = await stack.http.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    response: dict[str, Any] = reply.json()
    assert response_problems(response) == []
    return response


def _message(text: str, phase: str = "final_answer") -> dict[str, Any]:
    """An assistant output message as stepline sends it, its id left out."""
    return {
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "phase": phase,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key != "id"} for item in items]


def _ws_url(stack: Stack) -> str:
    return stack.url.replace("http://", "ws://", 1) + "/v1/responses"


async def _ws_turn(socket: ClientConnection, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Send one ``response.create``; its events up to a terminal one or an error envelope."""
    await socket.send(orjson.dumps({"type": "response.create", **body}).decode())
    events: list[dict[str, Any]] = []
    while not events or not (
        events[-1]["type"] in _TERMINAL
        or (events[-1]["type"] == "error" and "status" in events[-1])
    ):
        async with asyncio.timeout(RECEIVE_SECONDS):
            message = await socket.recv()
        assert isinstance(message, str), "events are text messages"
        events.append(orjson.loads(message))
    return events


def _completed(events: list[dict[str, Any]], *, transport: str = "websocket") -> dict[str, Any]:
    """The completed response at the end of a valid stream."""
    assert event_problems(events, transport=transport) == []  # type: ignore[arg-type]
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    assert response["status"] == "completed"
    return response


def _not_found(response_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "previous_response_not_found",
            "message": f"Previous response with id '{response_id}' not found.",
            "param": "previous_response_id",
        },
    }


# -- HTTP ------------------------------------------------------------------------------


async def test_basic_response(stack: Stack) -> None:
    stack.script("basic", [{"content": "Hello there, friend."}])

    response = await _create(
        stack, {"model": "basic", "input": [_user("Say hello in exactly 3 words.")]}
    )

    assert response["status"] == "completed"
    assert _without_ids(response["output"]) == [_message("Hello there, friend.")]


async def test_assistant_history_with_phase_is_accepted(stack: Stack) -> None:
    # the history holds two assistant messages: answer the first request, whatever it holds
    stack.model.register(
        "phase", Script.from_dict({"turns": [{"content": "four"}]}), turns="requests"
    )
    history = [
        {
            "type": "message",
            "role": "assistant",
            "phase": "commentary",
            "content": "I should answer with the saved number.",
        },
        {
            "type": "message",
            "role": "assistant",
            "phase": "final_answer",
            "content": "The number is four.",
        },
        _user("Repeat only the number."),
    ]

    response = await _create(stack, {"model": "phase", "input": history})

    assert _without_ids(response["output"]) == [_message("four")]
    assert stack.model.requests("phase")[0]["messages"] == [
        {"role": "assistant", "content": "I should answer with the saved number."},
        {"role": "assistant", "content": "The number is four."},
        {"role": "user", "content": "Repeat only the number."},
    ]


async def test_output_messages_carry_their_phase(stack: Stack) -> None:
    stack.script(
        "phases",
        [
            {
                "content": "I am checking the answer.",
                "tool_calls": [{"name": "get_weather", "arguments": {"location": "Oslo"}}],
            },
            {"content": "The answer is four."},
        ],
    )

    first = await _create(
        stack, {"model": "phases", "input": "What is the answer?", "tools": [WEATHER_TOOL]}
    )
    [call] = [item for item in first["output"] if item["type"] == "function_call"]
    second = await _create(
        stack,
        {
            "model": "phases",
            "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "4"}],
            "tools": [WEATHER_TOOL],
        },
    )

    assert [item.get("phase") for item in first["output"]] == ["commentary", None]
    assert _without_ids(first["output"])[0] == _message("I am checking the answer.", "commentary")
    assert _without_ids(second["output"]) == [_message("The answer is four.")]


async def test_streaming_response(stack: Stack) -> None:
    stack.script("count", [{"content": "1 2 3 4 5"}])

    body = {"model": "count", "input": [_user("Count from 1 to 5.")], "stream": True}
    async with stack.http.stream("POST", "/v1/responses", json=body) as reply:
        assert reply.status_code == 200
        events = await read_sse(reply)

    assert [event["type"] for event in events] == message_events(5)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    response = _completed(events, transport="http")
    assert _without_ids(response["output"]) == [_message("1 2 3 4 5")]


async def test_system_prompt(stack: Stack) -> None:
    stack.script("pirate", [{"content": "Ahoy!"}])
    system = "You are a pirate. Always respond in pirate speak."

    response = await _create(
        stack,
        {
            "model": "pirate",
            "input": [
                {"type": "message", "role": "system", "content": system},
                _user("Say hello."),
            ],
        },
    )

    assert _without_ids(response["output"]) == [_message("Ahoy!")]
    assert stack.model.requests("pirate")[0]["messages"] == [
        {"role": "system", "content": system},
        {"role": "user", "content": "Say hello."},
    ]


async def test_tool_calling_returns_a_function_call_and_echoes_the_tool_whole(
    stack: Stack,
) -> None:
    stack.script(
        "tools",
        [{"tool_calls": [{"name": "get_weather", "arguments": {"location": "San Francisco"}}]}],
        repeat_last=True,
    )
    bare = {"type": "function", "name": "get_weather"}

    described = await _create(
        stack,
        {
            "model": "tools",
            "input": [_user("What's the weather like in San Francisco?")],
            "tools": [WEATHER_TOOL],
        },
    )
    undescribed = await _create(stack, {"model": "tools", "input": "Weather?", "tools": [bare]})

    [call] = described["output"]
    assert {key: call[key] for key in ("type", "name", "arguments", "status")} == {
        "type": "function_call",
        "name": "get_weather",
        "arguments": '{"location":"San Francisco"}',
        "status": "completed",
    }
    assert described["tools"] == [{**WEATHER_TOOL, "strict": None}]
    # the schema wants each field present, null allowed, even when it was not sent
    assert undescribed["tools"] == [
        {**bare, "description": None, "parameters": None, "strict": None}
    ]


async def test_image_input(stack: Stack) -> None:
    stack.script("eyes", [{"content": "A red heart."}])
    image = "data:image/png;base64," + base64.b64encode(png(2, 2, (200, 0, 0))).decode()

    response = await _create(
        stack,
        {
            "model": "eyes",
            "input": [
                _user(
                    [
                        {"type": "input_text", "text": "What do you see in this image?"},
                        {"type": "input_image", "image_url": image},
                    ]
                )
            ],
        },
    )

    assert _without_ids(response["output"]) == [_message("A red heart.")]
    [sent] = stack.model.requests("eyes")[0]["messages"]
    assert sent["content"] == [
        {"type": "text", "text": "What do you see in this image?"},
        {"type": "image_url", "image_url": {"url": image, "detail": "auto"}},
    ]


async def test_multi_turn_history(stack: Stack) -> None:
    stack.script("alice", [{"content": "Your name is Alice."}], repeat_last=True)
    greeting = "Hello Alice! Nice to meet you. How can I help you today?"

    response = await _create(
        stack,
        {
            "model": "alice",
            "input": [
                _user("My name is Alice."),
                {"type": "message", "role": "assistant", "content": greeting},
                _user("What is my name?"),
            ],
        },
    )

    assert _without_ids(response["output"]) == [_message("Your name is Alice.")]
    assert stack.model.requests("alice")[0]["messages"] == [
        {"role": "user", "content": "My name is Alice."},
        {"role": "assistant", "content": greeting},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_compact_endpoint_returns_a_compaction_resource(stack: Stack) -> None:
    stack.script("compactor", [{"content": "Launch Tuesday; support first."}])

    reply = await stack.http.post(
        "/v1/responses/compact",
        json={
            "model": "compactor",
            "prompt_cache_key": "openresponses-compact-test",
            "input": [
                _user("We agreed to launch on Tuesday and notify support first."),
                {"type": "message", "role": "assistant", "content": "Understood."},
            ],
        },
    )

    assert reply.status_code == 200, reply.text
    compacted = reply.json()
    assert compaction_problems(compacted) == []
    assert compacted["object"] == "response.compaction"
    assert [item["type"] for item in compacted["output"]] == ["message", "compaction"]


async def test_compact_without_a_model_is_a_400(stack: Stack) -> None:
    reply = await stack.http.post(
        "/v1/responses/compact", json={"input": [_user("Compact this conversation.")]}
    )

    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "message": "Missing required parameter: 'model'.",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }
    assert stack.model.requests("compactor") == []


# -- WebSocket -------------------------------------------------------------------------


async def test_websocket_response(stack: Stack) -> None:
    stack.script("count", [{"content": "1 2 3"}])

    async with connect(_ws_url(stack)) as socket:
        events = await _ws_turn(socket, {"model": "count", "input": [_user("Count from 1 to 3.")]})

    assert [event["type"] for event in events] == message_events(3)
    assert _without_ids(_completed(events)["output"]) == [_message("1 2 3")]


async def test_websocket_sequential_responses(stack: Stack) -> None:
    stack.model.register(
        "echo",
        Script.from_dict({"turns": [{"content": "first"}, {"content": "second"}]}),
        turns="requests",
    )

    async with connect(_ws_url(stack)) as socket:
        first = await _ws_turn(
            socket, {"model": "echo", "store": False, "input": "Reply with exactly: first"}
        )
        second = await _ws_turn(
            socket, {"model": "echo", "store": False, "input": "Reply with exactly: second"}
        )

    assert [event["type"] for event in first] == message_events(1)
    assert [event["type"] for event in second] == message_events(1)
    one, two = _completed(first), _completed(second)
    assert (one["previous_response_id"], two["previous_response_id"]) == (None, None)
    assert [_without_ids(one["output"]), _without_ids(two["output"])] == [
        [_message("first")],
        [_message("second")],
    ]


async def test_websocket_continuation_sends_only_the_new_input(stack: Stack) -> None:
    stack.script("memory", [{"content": "OK."}, {"content": "cobalt"}])

    async with connect(_ws_url(stack)) as socket:
        first = _completed(
            await _ws_turn(
                socket,
                {"model": "memory", "store": False, "input": "Remember the code word: cobalt."},
            )
        )
        second = _completed(
            await _ws_turn(
                socket,
                {
                    "model": "memory",
                    "store": False,
                    "previous_response_id": first["id"],
                    "input": "What is the code word?",
                },
            )
        )

    assert second["previous_response_id"] == first["id"]
    assert _without_ids(second["output"]) == [_message("cobalt")]
    assert stack.model.requests("memory")[1]["messages"] == [
        {"role": "user", "content": "Remember the code word: cobalt."},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "What is the code word?"},
    ]


async def test_websocket_reconnect_then_recover_with_a_new_response(stack: Stack) -> None:
    stack.script("memory", [{"content": "OK."}], repeat_last=True)

    async with connect(_ws_url(stack)) as socket:
        first = _completed(
            await _ws_turn(socket, {"model": "memory", "store": False, "input": "copper"})
        )
    async with connect(_ws_url(stack)) as socket:
        missed = await _ws_turn(
            socket,
            {
                "model": "memory",
                "store": False,
                "previous_response_id": first["id"],
                "input": "Try to continue after reconnect.",
            },
        )
        recovered = _completed(
            await _ws_turn(
                socket, {"model": "memory", "store": False, "input": [_user("Start again.")]}
            )
        )

    assert missed == [_not_found(first["id"])]
    assert event_problems(missed, transport="websocket") == []
    assert recovered["previous_response_id"] is None
    assert stack.model.requests("memory")[-1]["messages"] == [
        {"role": "user", "content": "Start again."}
    ]


async def test_websocket_compacted_window_starts_a_new_chain(stack: Stack) -> None:
    stack.script("compactor", [{"content": "The code word is slate."}])
    stack.script("after", [{"content": "compacted"}])
    reply = await stack.http.post(
        "/v1/responses/compact",
        json={
            "model": "compactor",
            "input": [
                _user([{"type": "input_text", "text": "Remember the code word: slate."}]),
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "OK."}],
                },
            ],
        },
    )
    assert reply.status_code == 200, reply.text
    assert compaction_problems(reply.json()) == []

    async with connect(_ws_url(stack)) as socket:
        events = await _ws_turn(
            socket,
            {
                "model": "after",
                "store": False,
                "input": [*reply.json()["output"], _user("Continue from here.")],
                "tools": [],
            },
        )

    response = _completed(events)
    assert (response["previous_response_id"], _without_ids(response["output"])) == (
        None,
        [_message("compacted")],
    )
    sent = stack.model.requests("after")[0]["messages"]
    assert sent[-1] == {"role": "user", "content": "Continue from here."}
    assert any("slate" in str(message["content"]) for message in sent[:-1])
