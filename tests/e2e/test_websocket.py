"""The WebSocket transport on ``/v1/responses``, end to end, with a real WebSocket client.

Raw protocol tests use the ``websockets`` package; one test drives the official
SDK's ``client.responses.connect()``. Every receive is bounded by
:data:`RECEIVE_SECONDS`, so a server that never answers fails the test instead
of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from stepline._server import websocket
from stepline._server.auth import hash_token, new_token
from tests.durability.conftest import message_events
from tests.e2e.conftest import Stack, StackFactory, normalise_ids, read_sse, serve_stack

#: the longest any single receive may wait
RECEIVE_SECONDS = 10.0

_TERMINAL = ("response.completed", "response.failed", "response.incomplete")


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1) + "/v1/responses"


async def _receive(socket: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(RECEIVE_SECONDS):
        message = await socket.recv()
    assert isinstance(message, str), "events are sent as text messages"
    event: dict[str, Any] = orjson.loads(message)
    return event


def _is_refusal(event: dict[str, Any]) -> bool:
    """A WebSocket error envelope (it has ``status``), not a stream's ``error`` event."""
    return event["type"] == "error" and "status" in event


async def _read_turn(socket: ClientConnection) -> list[dict[str, Any]]:
    """Events up to and including a terminal event or an error envelope."""
    events: list[dict[str, Any]] = []
    while True:
        event = await _receive(socket)
        events.append(event)
        if event["type"] in _TERMINAL or _is_refusal(event):
            return events


async def _create(socket: ClientConnection, **body: Any) -> None:
    await socket.send(orjson.dumps({"type": "response.create", **body}).decode())


async def _turn(socket: ClientConnection, **body: Any) -> list[dict[str, Any]]:
    await _create(socket, **body)
    return await _read_turn(socket)


def _final(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "response.completed", events[-1]
    response: dict[str, Any] = events[-1]["response"]
    return response


def _output_text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


def _stable(events: list[dict[str, Any]]) -> list[Any]:
    """Events with generated ids and wall-clock times replaced by placeholders."""

    def times(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: "<time>"
                if key in ("created_at", "completed_at") and isinstance(item, int)
                else times(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [times(item) for item in value]
        return value

    return [times(event) for event in normalise_ids(events)]


def _refusal(code: str, param: str | None, status: int = 400) -> dict[str, Any]:
    """An error envelope as the test expects it; the message is checked apart."""
    return {
        "type": "error",
        "status": status,
        "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": "<message>",
            "param": param,
        },
    }


def _shown(event: dict[str, Any]) -> dict[str, Any]:
    """An error envelope with its (non-empty) message replaced by a placeholder; any
    other event as it is, so that a comparison shows it whole."""
    if event["type"] != "error" or "error" not in event:
        return event
    assert isinstance(event["error"]["message"], str) and event["error"]["message"]
    return {**event, "error": {**event["error"], "message": "<message>"}}


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


async def _sse(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
        assert reply.status_code == 200
        return await read_sse(reply)


async def test_websocket_sends_the_same_events_as_sse(stack: Stack) -> None:
    stack.script(
        "story",
        [{"content": "one two three", "usage": {"prompt_tokens": 3, "completion_tokens": 3}}],
    )
    body = {"model": "story", "input": "count", "metadata": {"via": "either"}}

    over_sse = await _sse(stack.http, body)
    async with connect(_ws_url(stack.url)) as socket:
        over_ws = await _turn(socket, **body)

    assert [event["type"] for event in over_ws] == message_events(3)
    assert [event["sequence_number"] for event in over_ws] == list(range(len(over_ws)))
    assert _stable(over_ws) == _stable(over_sse)


async def test_two_creates_sent_at_once_are_answered_one_after_the_other(stack: Stack) -> None:
    # the first answer is slow, so a server running both at once would interleave them
    stack.script("slow", [{"content": "a b c d e f", "token_delay": 0.02}])
    stack.script("quick", [{"content": "done"}])

    expected = [
        *await _sse(stack.http, {"model": "slow", "input": "first"}),
        *await _sse(stack.http, {"model": "quick", "input": "second"}),
    ]
    async with connect(_ws_url(stack.url)) as socket:
        await _create(socket, model="slow", input="first")
        await _create(socket, model="quick", input="second")
        events = [*await _read_turn(socket), *await _read_turn(socket)]

    assert [event["type"] for event in events] == [*message_events(6), *message_events(1)]
    assert _stable(events) == _stable(expected)


async def test_store_false_continuation_on_the_same_connection(stack: Stack) -> None:
    stack.script("memory", [{"content": "OK."}, {"content": "cobalt"}])

    async with connect(_ws_url(stack.url)) as socket:
        first = _final(
            await _turn(socket, model="memory", store=False, input="The code word is cobalt.")
        )
        second_events = await _turn(
            socket,
            model="memory",
            store=False,
            previous_response_id=first["id"],
            input="What is the code word?",
        )

    assert [event["type"] for event in second_events] == message_events(1)
    second = _final(second_events)
    assert (second["previous_response_id"], second["store"]) == (first["id"], False)
    assert _output_text(second) == "cobalt"
    sent = [request["messages"] for request in stack.model.requests("memory")]
    assert sent == [
        [{"role": "user", "content": "The code word is cobalt."}],
        [
            {"role": "user", "content": "The code word is cobalt."},
            {"role": "assistant", "content": "OK."},
            {"role": "user", "content": "What is the code word?"},
        ],
    ]
    # store: false means it was never readable over HTTP
    assert (await stack.http.get(f"/v1/responses/{second['id']}")).status_code == 404


async def test_store_false_unknown_previous_id_is_previous_response_not_found(
    stack: Stack,
) -> None:
    stack.script("memory", [{"content": "OK."}], repeat_last=True)

    async with connect(_ws_url(stack.url)) as socket:
        missing = await _turn(
            socket, model="memory", store=False, previous_response_id="resp_missing", input="hi"
        )
        # the connection is still usable
        kept = _final(await _turn(socket, model="memory", store=False, input="remember me"))
    assert missing == [_not_found("resp_missing")]

    # a store:false response lives only on the connection that made it
    async with connect(_ws_url(stack.url)) as other:
        elsewhere = await _turn(
            other, model="memory", store=False, previous_response_id=kept["id"], input="again"
        )
        elsewhere_stored = await _turn(
            other, model="memory", previous_response_id=kept["id"], input="again"
        )
    assert elsewhere == [_not_found(kept["id"])]
    assert elsewhere_stored == [_not_found(kept["id"])]
    assert len(stack.model.requests("memory")) == 1


async def test_failed_continuation_evicts_the_id_it_continued(stack: Stack) -> None:
    stack.script("memory", [{"content": "OK."}], repeat_last=True)
    # its second call (the continuation) fails upstream: a 5xx rather than a 400
    stack.script("flaky", [{"content": "OK."}, {"fault": {"status": 500}}])

    async with connect(_ws_url(stack.url)) as socket:
        first = _final(await _turn(socket, model="memory", store=False, input="hello"))
        failed = await _turn(
            socket,
            model="memory",
            store=False,
            previous_response_id=first["id"],
            input=[{"type": "function_call_output", "call_id": "call_nowhere", "output": "42"}],
        )
        again = await _turn(
            socket,
            model="memory",
            store=False,
            previous_response_id=first["id"],
            input="hello again",
        )

        flaky = _final(await _turn(socket, model="flaky", store=False, input="hello"))
        broken = await _turn(
            socket, model="flaky", store=False, previous_response_id=flaky["id"], input="more"
        )
        after_broken = await _turn(
            socket, model="flaky", store=False, previous_response_id=flaky["id"], input="more"
        )

    assert [_shown(event) for event in failed] == [_refusal("invalid_request_error", "input")]
    assert again == [_not_found(first["id"])]
    assert len(stack.model.requests("memory")) == 1
    assert [event["type"] for event in broken] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert after_broken == [_not_found(flaky["id"])]
    assert len(stack.model.requests("flaky")) == 2


async def test_http_only_fields_and_bad_messages_are_refused_and_the_connection_stays(
    stack: Stack,
) -> None:
    stack.script("hello", [{"content": "hi"}])

    async with connect(_ws_url(stack.url)) as socket:
        refused = [
            *await _turn(socket, model="hello", input="x", stream=False),
            *await _turn(socket, model="hello", input="x", stream_options={"include_usage": True}),
            *await _turn(socket, model="hello", input="x", background=False),
        ]
        await socket.send("{not json")
        refused.append(await _receive(socket))
        await socket.send(orjson.dumps({"type": "response.cancel"}).decode())
        refused.append(await _receive(socket))
        await socket.send(orjson.dumps(["response.create"]).decode())
        refused.append(await _receive(socket))
        answered = await _turn(socket, model="hello", input="x")

    assert [_shown(event) for event in refused] == [
        _refusal("invalid_request_error", "stream"),
        _refusal("invalid_request_error", "stream_options"),
        _refusal("invalid_request_error", "background"),
        _refusal("invalid_json", None),
        _refusal("invalid_type", "type"),
        _refusal("invalid_type", "type"),
    ]
    assert [event["type"] for event in answered] == message_events(1)
    assert len(stack.model.requests("hello")) == 1


async def test_stored_responses_continue_on_another_connection_and_over_http(
    stack: Stack,
) -> None:
    stack.script("memory", [{"content": "OK."}, {"content": "cobalt"}])

    async with connect(_ws_url(stack.url)) as socket:
        first = _final(await _turn(socket, model="memory", input="The code word is cobalt."))
    async with connect(_ws_url(stack.url)) as socket:
        second_events = await _turn(
            socket, model="memory", previous_response_id=first["id"], input="The word?"
        )

    assert [event["type"] for event in second_events] == message_events(1)
    second = _final(second_events)
    assert stack.model.requests("memory")[1]["messages"] == [
        {"role": "user", "content": "The code word is cobalt."},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "The word?"},
    ]
    for response in (first, second):
        fetched = await stack.http.get(f"/v1/responses/{response['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == response


@pytest.mark.parametrize("stack_factory", ["sqlite"], indirect=True)
async def test_a_chain_continued_in_memory_then_from_the_store_sends_each_turn_once(
    stack: Stack,
) -> None:
    stack.script(
        "memory", [{"content": "a1"}, {"content": "a2"}, {"content": "a3"}], repeat_last=True
    )

    async with connect(_ws_url(stack.url)) as socket:
        first = _final(await _turn(socket, model="memory", input="u1"))
        second = _final(
            await _turn(socket, model="memory", previous_response_id=first["id"], input="u2")
        )
    async with connect(_ws_url(stack.url)) as socket:
        await _turn(socket, model="memory", previous_response_id=second["id"], input="u3")

    assert stack.model.requests("memory")[2]["messages"] == [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "u3"},
    ]


@pytest.mark.parametrize("stack_factory", ["sqlite"], indirect=True)
async def test_a_message_over_the_request_size_limit_is_refused(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(max_request_bytes=2000)
    stack.script("hello", [{"content": "hi"}])

    async with connect(_ws_url(stack.url)) as socket:
        refused = await _turn(socket, model="hello", input="x" * 5000)

    assert [_shown(event) for event in refused] == [_refusal("request_too_large", None, status=413)]
    assert stack.model.requests("hello") == []


async def test_a_dropped_connection_does_not_stop_the_response(stack: Stack) -> None:
    words = "one two three four five six seven eight"
    # paced, so the response is far from done when the socket goes
    stack.script("slow", [{"content": words, "token_delay": 0.05}])

    async with connect(_ws_url(stack.url)) as socket:
        await _create(socket, model="slow", input="count")
        seen = [await _receive(socket)]
        while seen[-1]["type"] != "response.output_text.delta":
            seen.append(await _receive(socket))
    response_id = seen[0]["response"]["id"]

    async with asyncio.timeout(RECEIVE_SECONDS):
        async with stack.http.stream("GET", f"/v1/responses/{response_id}?stream=true") as reply:
            replayed = await read_sse(reply)
    assert [event["type"] for event in replayed] == message_events(8)
    assert replayed[: len(seen)] == seen
    fetched = (await stack.http.get(f"/v1/responses/{response_id}")).json()
    assert (fetched["status"], _output_text(fetched)) == ("completed", words)


async def test_a_connection_ends_at_its_time_limit(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.script("hello", [{"content": "hi"}])
    monkeypatch.setattr(websocket, "CONNECTION_SECONDS", 0.5)

    async with connect(_ws_url(stack.url)) as socket:
        answered = await _turn(socket, model="hello", input="x")
        limit = await _receive(socket)
        with pytest.raises(ConnectionClosedOK):
            await _receive(socket)

    assert [event["type"] for event in answered] == message_events(1)
    assert _shown(limit) == _refusal("websocket_connection_limit_reached", None)
    assert socket.close_code == 1000


async def test_generate_false_warms_up_without_a_model_call(stack: Stack) -> None:
    stack.script("warm", [{"content": "ready"}])
    tools = [
        {
            "type": "function",
            "name": "shell",
            "description": "Run a command.",
            "parameters": {"type": "object", "properties": {}},
        }
    ]

    async with connect(_ws_url(stack.url)) as socket:
        warm = await _turn(
            socket,
            model="warm",
            store=False,
            generate=False,
            instructions="You are a coding agent.",
            input="You work in /repo.",
            tools=tools,
        )
        assert stack.model.requests("warm") == []
        answered = await _turn(
            socket,
            model="warm",
            store=False,
            previous_response_id=warm[0]["response"]["id"],
            instructions="You are a coding agent.",
            input="Hi",
            tools=tools,
        )

    shown = warm[0]["response"]
    assert (shown["status"], shown["output"], shown["model"]) == ("in_progress", [], "warm")
    assert shown["tools"][0]["name"] == "shell"
    completed = {
        **shown,
        "status": "completed",
        "completed_at": warm[2]["response"]["completed_at"],
        "usage": {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        },
    }
    assert warm == [
        {"type": "response.created", "sequence_number": 0, "response": shown},
        {"type": "response.in_progress", "sequence_number": 1, "response": shown},
        {"type": "response.completed", "sequence_number": 2, "response": completed},
    ]
    assert isinstance(completed["completed_at"], int)
    assert [event["type"] for event in answered] == message_events(1)
    # the warm-up response is a whole response object, as a real one is
    assert set(shown) == set(answered[0]["response"])
    assert _final(answered)["previous_response_id"] == shown["id"]
    sent = stack.model.requests("warm")
    assert len(sent) == 1
    assert sent[0]["messages"] == [
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": "You work in /repo."},
        {"role": "user", "content": "Hi"},
    ]


async def test_the_official_sdk_runs_a_conversation_over_its_websocket(stack: Stack) -> None:
    stack.script("memory", [{"content": "OK."}, {"content": "cobalt"}])

    async with stack.client.responses.connect() as connection:
        await connection.response.create(model="memory", store=False, input="cobalt, remember")
        first = [await _sdk_receive(connection)]
        while first[-1].type != "response.completed":
            first.append(await _sdk_receive(connection))
        first_id = first[-1].response.id
        await connection.response.create(
            model="memory", store=False, previous_response_id=first_id, input="The word?"
        )
        second = [await _sdk_receive(connection)]
        while second[-1].type not in (*_TERMINAL, "error"):
            second.append(await _sdk_receive(connection))

    assert [event.type for event in first] == message_events(1)
    assert [event.type for event in second] == message_events(1)
    final = second[-1].response
    assert (final.previous_response_id, final.output_text) == (first_id, "cobalt")


async def _sdk_receive(connection: Any) -> Any:
    async with asyncio.timeout(RECEIVE_SECONDS):
        return await connection.recv()


# -- API keys ------------------------------------------------------------------------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Stack, dict[str, str]]]:
    """A stack on SQLite whose API keys are ``alice`` and ``bob``; their tokens."""
    tokens = {name: new_token() for name in ("alice", "bob")}

    def configure(data: dict[str, Any], tools_url: str) -> None:
        data["keys"] = {name: {"hash": hash_token(token)} for name, token in tokens.items()}

    async with AsyncExitStack() as exits:
        stack = await serve_stack(
            exits, "sqlite", tmp_path, configure=configure, api_key=tokens["alice"]
        )
        yield stack, tokens


async def test_keys_guard_the_websocket(keyed: tuple[Stack, dict[str, str]]) -> None:
    stack, tokens = keyed
    stack.script("memory", [{"content": "OK."}], repeat_last=True)

    def auth(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_ws_url(stack.url), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403

    async with connect(_ws_url(stack.url), additional_headers=auth("alice")) as socket:
        alices = _final(await _turn(socket, model="memory", input="mine"))
    async with connect(_ws_url(stack.url), additional_headers=auth("bob")) as socket:
        bobs = await _turn(socket, model="memory", previous_response_id=alices["id"], input="x")
    assert bobs == [_not_found(alices["id"])]
    assert len(stack.model.requests("memory")) == 1
    # over HTTP too, alice's response is alice's alone
    seen = await stack.http.get(f"/v1/responses/{alices['id']}", headers=auth("alice"))
    hidden = await stack.http.get(f"/v1/responses/{alices['id']}", headers=auth("bob"))
    assert (seen.status_code, hidden.status_code) == (200, 404)


async def test_a_client_cannot_send_the_internal_history_flag_past_the_key_check(
    keyed: tuple[Stack, dict[str, str]],
) -> None:
    stack, tokens = keyed
    stack.script("memory", [{"content": "OK."}], repeat_last=True)
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    bob = {"Authorization": f"Bearer {tokens['bob']}"}

    async with connect(_ws_url(stack.url), additional_headers=alice) as socket:
        alices = _final(await _turn(socket, model="memory", input="alice's secret"))
    async with connect(_ws_url(stack.url), additional_headers=bob) as socket:
        smuggled = await _turn(
            socket,
            model="memory",
            previous_response_id=alices["id"],
            input="x",
            **{"stepline:history_inline": True},
        )

    assert smuggled == [_not_found(alices["id"])]
