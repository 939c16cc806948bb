"""The scripted Chat Completions server, over a real socket, with httpx and the openai SDK."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageCustomToolCall, ChatCompletionMessageParam

from stepline.scripted import (
    Fault,
    Script,
    ScriptedCustomToolCall,
    ScriptedModel,
    ScriptedToolCall,
    ScriptedUsage,
    Turn,
    create_scripted_app,
    serve_app,
)

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
SDK_QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]
WEATHER_CALL = ScriptedToolCall(name="get_weather", arguments={"city": "Paris"})
PATCH = "*** Begin Patch\n+hello\n*** End Patch"
PATCH_CALL = ScriptedCustomToolCall(name="apply_patch", input=PATCH)


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel(demo_token_delay=0)


@pytest.fixture
async def url(model: ScriptedModel) -> AsyncIterator[str]:
    async with serve_app(create_scripted_app(model)) as base_url:
        yield base_url


@pytest.fixture
async def client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http


def script(*turns: Turn, repeat_last: bool = False) -> Script:
    return Script(turns=turns, repeat_last=repeat_last)


def payloads(text: str) -> list[Any]:
    """The data of each SSE event, decoded; ``[DONE]`` stays a string."""
    events = text.split("\n\n")
    assert events[-1] == "", "the stream must end with a complete event"
    assert all(event.startswith("data: ") for event in events[:-1])
    data = [event.removeprefix("data: ") for event in events[:-1]]
    return [item if item == "[DONE]" else orjson.loads(item) for item in data]


def chunk(
    first: dict[str, Any], delta: dict[str, Any], finish: str | None = None
) -> dict[str, Any]:
    envelope = {key: first[key] for key in ("id", "object", "created", "model")}
    return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def read_lines(
    client: httpx.AsyncClient, name: str, into: list[str], *, stream: bool = True
) -> None:
    """Stream a completion line by line into ``into``, so a test keeps what came before an error."""
    body = {"model": name, "messages": QUESTION, "stream": stream}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line:
                into.append(line)


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def complete(
    client: httpx.AsyncClient, name: str, messages: Any = QUESTION, **extra: Any
) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json={"model": name, "messages": messages, **extra}
    )


# --- streaming format ---


async def test_a_stream_is_exactly_the_chat_completions_event_sequence(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register(
        "weather",
        script(
            Turn(reasoning="Let me think", content="Sunny and warm", tool_calls=(WEATHER_CALL,))
        ),
    )
    response = await complete(
        client, "weather", stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = payloads(response.text)
    first = events[0]
    assert first["id"].startswith("chatcmpl-")
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "weather"
    assert isinstance(first["created"], int)
    call_head = {"index": 0, "id": "call_0_0", "type": "function"}
    assert events == [
        chunk(first, {"role": "assistant", "content": ""}),
        chunk(first, {"reasoning_content": "Let"}),
        chunk(first, {"reasoning_content": " me"}),
        chunk(first, {"reasoning_content": " think"}),
        chunk(first, {"content": "Sunny"}),
        chunk(first, {"content": " and"}),
        chunk(first, {"content": " warm"}),
        chunk(
            first,
            {"tool_calls": [{**call_head, "function": {"name": "get_weather", "arguments": ""}}]},
        ),
        chunk(first, {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":'}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "function": {"arguments": '"Par'}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        chunk(first, {}, "tool_calls"),
        {
            "id": first["id"],
            "object": "chat.completion.chunk",
            "created": first["created"],
            "model": "weather",
            "choices": [],
            # 6 words asked; 3 reasoning + 3 content + 4 argument pieces streamed
            "usage": {"prompt_tokens": 6, "completion_tokens": 10, "total_tokens": 16},
        },
        "[DONE]",
    ]


async def test_parallel_calls_chunking_and_explicit_usage(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register(
        "s",
        script(
            Turn(
                content="one two three four five",
                chunk_size=2,
                tool_calls=(
                    ScriptedToolCall(name="a", arguments="{", id="mine"),
                    ScriptedToolCall(name="b", arguments=""),
                ),
                usage=ScriptedUsage(prompt_tokens=100, completion_tokens=7),
                finish_reason="length",
            )
        ),
    )
    events = payloads((await complete(client, "s", stream=True)).text)
    first = events[0]
    assert events == [
        chunk(first, {"role": "assistant", "content": ""}),
        chunk(first, {"content": "one two"}),
        chunk(first, {"content": " three four"}),
        chunk(first, {"content": " five"}),
        chunk(
            first,
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "mine",
                        "type": "function",
                        "function": {"name": "a", "arguments": ""},
                    }
                ]
            },
        ),
        chunk(first, {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        chunk(
            first,
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_0_1",
                        "type": "function",
                        "function": {"name": "b", "arguments": ""},
                    }
                ]
            },
        ),
        chunk(first, {}, "length"),
        "[DONE]",
    ]
    # usage is only streamed when asked for; the non-streamed answer always has it
    body = (await complete(client, "s")).json()
    assert body["usage"] == {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}


async def test_whitespace_survives_chunking(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    text = "  Hello,\n\nworld!  How   are you?\n"
    model.register("s", script(Turn(content=text, chunk_size=1)))
    events = payloads((await complete(client, "s", stream=True)).text)
    pieces = [e["choices"][0]["delta"]["content"] for e in events[1:-2]]
    assert pieces == ["  Hello,", "\n\nworld!", "  How", "   are", " you?\n"]


async def test_non_streaming_answer_is_a_chat_completion(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(reasoning="hmm ok", tool_calls=(WEATHER_CALL,))))
    response = await complete(client, "s")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "s"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "reasoning_content": "hmm ok",
                "tool_calls": [
                    {
                        "id": "call_0_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}


async def test_an_empty_turn_answers_empty_text(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn()))
    message = (await complete(client, "s")).json()["choices"][0]
    assert message["message"] == {"role": "assistant", "content": ""}
    assert message["finish_reason"] == "stop"


# --- custom tool calls ---


async def test_custom_tool_calls_stream_their_input_in_pieces(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register(
        "s",
        script(
            Turn(tool_calls=(WEATHER_CALL, PATCH_CALL, ScriptedCustomToolCall(name="e", input="")))
        ),
    )
    events = payloads((await complete(client, "s", stream=True)).text)
    first = events[0]

    def call(piece: dict[str, Any]) -> dict[str, Any]:
        return chunk(first, {"tool_calls": [piece]})

    assert events == [
        chunk(first, {"role": "assistant", "content": ""}),
        call(
            {
                "index": 0,
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ),
        call({"index": 0, "function": {"arguments": '{"ci'}}),
        call({"index": 0, "function": {"arguments": 'ty":'}}),
        call({"index": 0, "function": {"arguments": '"Par'}}),
        call({"index": 0, "function": {"arguments": 'is"}'}}),
        call(
            {
                "index": 1,
                "id": "call_0_1",
                "type": "custom",
                "custom": {"name": "apply_patch", "input": ""},
            }
        ),
        # 36 characters in 4 pieces of 9, split mid-line: input is plain text
        call({"index": 1, "custom": {"input": "*** Begin"}}),
        call({"index": 1, "custom": {"input": " Patch\n+h"}}),
        call({"index": 1, "custom": {"input": "ello\n*** "}}),
        call({"index": 1, "custom": {"input": "End Patch"}}),
        # an empty input has no pieces, like empty arguments
        call(
            {"index": 2, "id": "call_0_2", "type": "custom", "custom": {"name": "e", "input": ""}}
        ),
        chunk(first, {}, "tool_calls"),
        "[DONE]",
    ]
    pieces = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[7:11]]
    assert "".join(piece["custom"]["input"] for piece in pieces) == PATCH


async def test_a_non_streamed_custom_call_is_a_custom_tool_call_message(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register(
        "s", script(Turn(content="Patching.", tool_calls=(PATCH_CALL,)), Turn(content="Done."))
    )
    body = (await complete(client, "s")).json()
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Patching.",
                "tool_calls": [
                    {
                        "id": "call_0_0",
                        "type": "custom",
                        "custom": {"name": "apply_patch", "input": PATCH},
                    }
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        }
    ]
    # 1 content piece + 4 input pieces
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
    # the custom input sent back in the history counts toward the prompt (6 words)
    follow_up = [
        *QUESTION,
        body["choices"][0]["message"],
        {"role": "tool", "tool_call_id": "call_0_0", "content": "ok"},
    ]
    second = (await complete(client, "s", follow_up)).json()
    assert second["usage"]["prompt_tokens"] == 6 + 1 + 7 + 1


async def test_the_openai_sdk_parses_custom_tool_calls(model: ScriptedModel, url: str) -> None:
    model.register("s", script(Turn(tool_calls=(PATCH_CALL,))))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="s", messages=SDK_QUESTION)
    [call] = completion.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageCustomToolCall)
    assert (call.id, call.custom.name, call.custom.input) == ("call_0_0", "apply_patch", PATCH)


# --- logprobs ---


def token(text: str, top: list[tuple[str, float]]) -> dict[str, Any]:
    """One expected logprob entry: ``text`` at -0.1 with the given candidates."""
    return {
        "token": text,
        "logprob": -0.1,
        "bytes": list(text.encode()),
        "top_logprobs": [
            {"token": name, "logprob": logprob, "bytes": list(name.encode())}
            for name, logprob in top
        ],
    }


async def test_logprobs_ride_on_every_content_chunk(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register(
        "s",
        script(
            Turn(reasoning="hm", content="Grüß dich, Welt", chunk_size=2, tool_calls=(PATCH_CALL,))
        ),
    )
    response = await complete(client, "s", stream=True, logprobs=True, top_logprobs=3)
    events = payloads(response.text)
    first = events[0]

    def with_logprobs(delta: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
        expected = chunk(first, delta)
        expected["choices"][0]["logprobs"] = {"content": [entry]}
        return expected

    alternatives = [("<alt1>", -1.0), ("<alt2>", -2.0)]
    patch_head = {"index": 0, "id": "call_0_0", "type": "custom"}
    assert events == [
        chunk(first, {"role": "assistant", "content": ""}),
        chunk(first, {"reasoning_content": "hm"}),
        with_logprobs(
            {"content": "Grüß dich,"}, token("Grüß dich,", [("Grüß dich,", -0.1), *alternatives])
        ),
        with_logprobs({"content": " Welt"}, token(" Welt", [(" Welt", -0.1), *alternatives])),
        chunk(
            first, {"tool_calls": [{**patch_head, "custom": {"name": "apply_patch", "input": ""}}]}
        ),
        chunk(first, {"tool_calls": [{"index": 0, "custom": {"input": "*** Begin"}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "custom": {"input": " Patch\n+h"}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "custom": {"input": "ello\n*** "}}]}),
        chunk(first, {"tool_calls": [{"index": 0, "custom": {"input": "End Patch"}}]}),
        chunk(first, {}, "tool_calls"),
        "[DONE]",
    ]
    # bytes are UTF-8: ü and ß take two each
    assert len(events[2]["choices"][0]["logprobs"]["content"][0]["bytes"]) == 12


async def test_logprobs_without_stream_and_without_top_logprobs(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="a b"), repeat_last=True))
    choice = (await complete(client, "s", logprobs=True)).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "a b"}
    assert choice["logprobs"] == {"content": [token("a", []), token(" b", [])]}
    one = (await complete(client, "s", logprobs=True, top_logprobs=1)).json()["choices"][0]
    assert one["logprobs"] == {"content": [token("a", [("a", -0.1)]), token(" b", [(" b", -0.1)])]}
    # logprobs false (or null) is the same as not asking; top_logprobs 0 asks for none
    for flags in ({"logprobs": False}, {"logprobs": None, "top_logprobs": 0}):
        assert (await complete(client, "s", **flags)).json()["choices"][0]["logprobs"] is None
        events = payloads((await complete(client, "s", stream=True, **flags)).text)
        assert not any("logprobs" in e["choices"][0] for e in events[:-1])


async def test_the_openai_sdk_reads_streamed_logprobs(model: ScriptedModel, url: str) -> None:
    model.register("s", script(Turn(content="It is sunny")))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="s",
            messages=SDK_QUESTION,
            stream=True,
            logprobs=True,
            top_logprobs=2,
        )
        tokens: list[tuple[str, float, list[str]]] = []
        async for part in stream:
            for choice in part.choices:
                for entry in (choice.logprobs.content or []) if choice.logprobs else []:
                    tops = [top.token for top in entry.top_logprobs]
                    tokens.append((entry.token, entry.logprob, tops))
    assert tokens == [
        ("It", -0.1, ["It", "<alt1>"]),
        (" is", -0.1, [" is", "<alt1>"]),
        (" sunny", -0.1, [" sunny", "<alt1>"]),
    ]


# --- turn selection ---


async def test_the_turn_is_the_number_of_assistant_messages(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(tool_calls=(WEATHER_CALL,)), Turn(content="It is sunny.")))
    first = (await complete(client, "s")).json()["choices"][0]["message"]
    follow_up = [
        *QUESTION,
        first,
        {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"], "content": "sunny"},
    ]
    second = (await complete(client, "s", follow_up)).json()["choices"][0]["message"]
    assert second["content"] == "It is sunny."
    # the same first call again gets turn 0 again: no state between calls
    again = (await complete(client, "s")).json()["choices"][0]["message"]
    assert again["tool_calls"] == first["tool_calls"]

    exhausted = await complete(
        client, "s", [*follow_up, second, {"role": "user", "content": "and?"}]
    )
    assert exhausted.status_code == 400
    assert exhausted.json() == {
        "error": {
            "message": "script s has no turn 2",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "script_exhausted",
        }
    }


async def test_repeat_last_keeps_call_ids_unique_in_the_conversation(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("loop", script(Turn(tool_calls=(WEATHER_CALL, WEATHER_CALL)), repeat_last=True))
    messages: list[dict[str, Any]] = list(QUESTION)
    seen: list[str] = []
    for _ in range(3):
        message = (await complete(client, "loop", messages)).json()["choices"][0]["message"]
        ids = [call["id"] for call in message["tool_calls"]]
        seen += ids
        messages += [message, *({"role": "tool", "tool_call_id": i, "content": "x"} for i in ids)]
    assert seen == ["call_0_0", "call_0_1", "call_1_0", "call_1_1", "call_2_0", "call_2_1"]


# --- faults ---


async def test_an_http_fault_hits_only_the_first_attempts_of_its_turn(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    flaky = Turn(
        content="finally", fault=Fault(status=429, message="slow down", retry_after=2, times=2)
    )
    model.register("s", script(flaky, flaky))
    statuses = []
    for _ in range(3):
        response = await complete(client, "s")
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "2"
            assert response.json() == {
                "error": {
                    "message": "slow down",
                    "type": "rate_limit_error",
                    "param": None,
                    "code": "scripted_fault",
                }
            }
    assert statuses == [429, 429, 200]
    assert model.attempts("s", 0) == 3
    # turn 1 counts its own attempts
    second_turn = [*QUESTION, {"role": "assistant", "content": "x"}]
    assert (await complete(client, "s", second_turn)).status_code == 429
    assert model.attempts("s", 1) == 1


async def test_a_server_error_without_retry_after(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(fault=Fault(status=503, message="down"))))
    for _ in range(2):
        response = await complete(client, "s", stream=True)
        assert response.status_code == 503
        assert "retry-after" not in response.headers
        assert response.json()["error"]["type"] == "server_error"


async def test_drop_cuts_the_stream_after_n_events(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="a b c d e", fault=Fault(drop_after=3, times=1))))
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        await read_lines(client, "s", received)
    events = [orjson.loads(line.removeprefix("data: ")) for line in received]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "a"},
        {"content": " b"},
    ]
    # times=1: the retry gets the whole stream
    assert payloads((await complete(client, "s", stream=True)).text)[-1] == "[DONE]"


async def test_drop_cuts_a_non_streamed_body(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="a b c", fault=Fault(drop_after=0))))
    with pytest.raises(httpx.RemoteProtocolError):
        await complete(client, "s")


async def test_garbage_is_the_second_event(model: ScriptedModel, client: httpx.AsyncClient) -> None:
    model.register("s", script(Turn(content="hi", fault=Fault(garbage=True))))
    text = (await complete(client, "s", stream=True)).text
    raw = [event.removeprefix("data: ") for event in text.split("\n\n")[:-1]]
    assert raw[1] == "{not json"
    assert len(raw) == 5  # role, garbage, "hi", finish, [DONE]
    assert raw[-1] == "[DONE]"
    assert (await complete(client, "s")).content == b"{not json"


async def test_no_finish_ends_cleanly_without_a_finish_reason(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="hi there", fault=Fault(no_finish=True))))
    events = payloads(
        (await complete(client, "s", stream=True, stream_options={"include_usage": True})).text
    )
    assert events[-1] == "[DONE]"
    assert "usage" in events[-2]
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
    assert (await complete(client, "s")).json()["choices"][0]["finish_reason"] is None


async def test_a_stall_pauses_then_the_stream_goes_on(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="a b c", fault=Fault(stall_after=2, stall=0.3))))
    arrivals: list[float] = []
    async with client.stream(
        "POST", "/v1/chat/completions", json={"model": "s", "messages": QUESTION, "stream": True}
    ) as response:
        async for line in response.aiter_lines():
            if line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6  # role, a, b, c, finish, [DONE]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert gaps[1] >= 0.25
    assert max(gaps) == gaps[1]


async def test_a_stalled_stream_ends_when_the_client_leaves(model: ScriptedModel) -> None:
    model.register("s", script(Turn(content="a b c", fault=Fault(stall_after=2, stall=60))))
    async with serve_app(create_scripted_app(model)) as url:
        received: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=0.3)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await read_lines(http, "s", received)
        assert len(received) == 2
        started = time.monotonic()
    # the server noticed the client leave and stopped the stall: no 60 s wait at exit
    assert time.monotonic() - started < 3


async def test_delay_holds_back_the_first_byte(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="hi", delay=0.3), repeat_last=True))
    for stream in (True, False):
        started = time.monotonic()
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "s", "messages": QUESTION, "stream": stream},
        ) as response:
            assert time.monotonic() - started >= 0.29
            await response.aread()
        assert response.status_code == 200


async def test_a_long_delay_times_out_the_client_and_ends_with_it(model: ScriptedModel) -> None:
    model.register("s", script(Turn(content="hi", delay=60)))
    async with serve_app(create_scripted_app(model)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=0.2)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await complete(http, "s", stream=True)
        started = time.monotonic()
    assert time.monotonic() - started < 3


async def test_token_delay_paces_the_chunks(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="a b c d", token_delay=0.05)))
    started = time.monotonic()
    events = payloads((await complete(client, "s", stream=True)).text)
    # 7 events, 6 pauses between them
    assert len(events) == 7
    assert time.monotonic() - started >= 0.3


# --- the request log and the admin routes ---


async def test_received_requests_are_logged_per_model(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(tool_calls=(WEATHER_CALL,)), Turn(content="done")))
    first = (await complete(client, "s")).json()["choices"][0]["message"]
    follow_up = [
        {"role": "system", "content": "be brief"},
        *QUESTION,
        first,
        {"role": "tool", "tool_call_id": "call_0_0", "content": "sunny"},
    ]
    await complete(client, "s", follow_up, tools=[], temperature=0)
    logged = model.requests("s")
    assert [len(body["messages"]) for body in logged] == [1, 4]
    assert logged[1]["messages"][0] == {"role": "system", "content": "be brief"}
    assert logged[1]["messages"][3]["tool_call_id"] == "call_0_0"
    assert logged[1]["temperature"] == 0
    over_http = await client.get("/v1/requests", params={"model": "s"})
    assert over_http.json() == logged
    assert (await client.get("/v1/requests", params={"model": "nobody"})).json() == []


async def test_the_request_log_keeps_only_the_newest() -> None:
    model = ScriptedModel(request_log_size=3)
    model.register("s", script(Turn(content="x"), repeat_last=True))
    async with (
        serve_app(create_scripted_app(model)) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        for number in range(5):
            await complete(http, "s", [{"role": "user", "content": str(number)}])
    assert [body["messages"][0]["content"] for body in model.requests("s")] == ["2", "3", "4"]


async def test_scripts_register_over_http(model: ScriptedModel, client: httpx.AsyncClient) -> None:
    posted = await client.post(
        "/v1/scripts", json={"name": "remote", "script": {"turns": [{"content": "from afar"}]}}
    )
    assert posted.status_code == 200
    assert posted.json() == {"name": "remote"}
    answer = (await complete(client, "remote")).json()
    assert answer["choices"][0]["message"]["content"] == "from afar"
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [entry["id"] for entry in models["data"]] == ["remote", "demo"]


async def test_registering_again_forgets_attempts_and_requests(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    model.register("s", script(Turn(content="x", fault=Fault(status=500, times=1))))
    assert (await complete(client, "s")).status_code == 500
    await client.post(
        "/v1/scripts", json={"name": "s", "script": Script(turns=(Turn(content="y"),)).to_dict()}
    )
    assert model.requests("s") == []
    assert model.attempts("s", 0) == 0
    assert (await complete(client, "s")).json()["choices"][0]["message"]["content"] == "y"


@pytest.mark.parametrize(
    ("path", "body", "message", "param"),
    [
        ("/v1/chat/completions", b"{nope", "the request body must be valid JSON", None),
        ("/v1/chat/completions", b"[1]", "the request body must be a JSON object", None),
        ("/v1/chat/completions", b'{"messages": []}', "model must be a non-empty string", "model"),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": {}}',
            "messages must be a non-empty list",
            "messages",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [1]}',
            "each message must be",
            "messages[0]",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}',
            "stream must be a boolean",
            "stream",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "logprobs": 1}',
            "logprobs must be a boolean",
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "logprobs": true, "top_logprobs": 21}',
            "top_logprobs must be an integer from 0 to 20",
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "top_logprobs": false}',
            "top_logprobs must be an integer from 0 to 20",
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m", "messages": [{"role": "user"}], "top_logprobs": 2}',
            "top_logprobs needs logprobs: true",
            "top_logprobs",
        ),
        ("/v1/scripts", b'{"script": {}}', "name must be a non-empty string", "name"),
        ("/v1/scripts", b'{"name": "x"}', "a script must be a JSON object", "script"),
        (
            "/v1/scripts",
            b'{"name": "x", "script": {"turns": [{"fault": {"status": 99}}]}}',
            "turns.0.fault.status: Input should be greater than or equal to 400",
            "script.turns.0.fault.status",
        ),
    ],
)
async def test_bad_input_gets_the_openai_error_envelope(
    client: httpx.AsyncClient, path: str, body: bytes, message: str, param: str | None
) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


async def test_requests_log_needs_a_model_and_unknown_routes_are_404(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get("/v1/requests")
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"
    unknown = await client.get("/v1/nothing")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "GET /v1/nothing: Not Found"
    assert unknown.json()["error"]["type"] == "not_found_error"
    wrong_method = await client.get("/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"


# --- the demo behaviour over HTTP ---


async def test_unscripted_models_get_the_demo(
    model: ScriptedModel, client: httpx.AsyncClient
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    ask = [{"role": "user", "content": "How is the weather in Rome?"}]
    first = (await complete(client, "anything", ask, tools=tools)).json()["choices"][0]
    assert first["finish_reason"] == "tool_calls"
    call = first["message"]["tool_calls"][0]
    assert call["id"] == "call_0_0"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    follow_up = [
        *ask,
        first["message"],
        {"role": "tool", "tool_call_id": "call_0_0", "content": "Sunny"},
    ]
    events = payloads(
        (await complete(client, "anything", follow_up, tools=tools, stream=True)).text
    )
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == 'Here is what the tools returned:\n- `get_weather` returned "Sunny"'
    assert model.requests("anything")[1]["messages"][-1]["role"] == "tool"


async def test_demo_pacing_is_a_constructor_option() -> None:
    model = ScriptedModel(demo_token_delay=0.02)
    async with (
        serve_app(create_scripted_app(model)) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        started = time.monotonic()
        events = payloads(
            (await complete(http, "demo", [{"role": "user", "content": "hi"}], stream=True)).text
        )
    pauses = len(events) - 1
    assert time.monotonic() - started >= 0.02 * pauses * 0.9


# --- the official SDK ---


async def test_the_openai_sdk_reads_answers_and_streams(model: ScriptedModel, url: str) -> None:
    model.register(
        "s",
        script(
            Turn(reasoning="why", content="It is", tool_calls=(WEATHER_CALL,)), repeat_last=True
        ),
    )
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="s", messages=SDK_QUESTION)
        message = completion.choices[0].message
        assert message.content == "It is"
        assert message.tool_calls is not None
        assert message.tool_calls[0].id == "call_0_0"
        assert completion.usage is not None
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 7

        stream = await sdk.chat.completions.create(
            model="s",
            messages=SDK_QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
        content, arguments, finish, usage = "", "", None, None
        async for part in stream:
            if part.usage is not None:
                usage = part.usage
            for choice in part.choices:
                content += choice.delta.content or ""
                for call in choice.delta.tool_calls or ():
                    arguments += call.function.arguments or "" if call.function else ""
                finish = choice.finish_reason or finish
        assert (content, arguments, finish) == ("It is", '{"city":"Paris"}', "tool_calls")
        assert usage is not None
        assert usage.completion_tokens == 7  # 1 reasoning, 2 text, 4 argument pieces

        listed = [entry.id async for entry in sdk.models.list()]
        assert listed == ["s", "demo"]


async def test_the_openai_sdk_sees_faults_as_its_own_errors(model: ScriptedModel, url: str) -> None:
    model.register(
        "limited", script(Turn(fault=Fault(status=429, message="slow down", retry_after=1)))
    )
    model.register("dropped", script(Turn(content="a b c", fault=Fault(drop_after=2))))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.chat.completions.create(model="limited", messages=SDK_QUESTION)
        assert limited.value.message == "Error code: 429 - slow down"
        assert limited.value.response.headers["retry-after"] == "1"
        stream = await sdk.chat.completions.create(
            model="dropped",
            messages=SDK_QUESTION,
            stream=True,
        )
        with pytest.raises(openai.APIConnectionError):
            await drain(stream)


async def test_many_concurrent_streams(model: ScriptedModel, client: httpx.AsyncClient) -> None:
    model.register("s", script(Turn(content="word " * 50)))

    async def one() -> int:
        return len(payloads((await complete(client, "s", stream=True)).text))

    assert await asyncio.gather(*(one() for _ in range(20))) == [53] * 20
