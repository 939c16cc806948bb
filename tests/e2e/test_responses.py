"""The Responses API end to end: the official SDK against stepline on a real socket."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tests.e2e.conftest import Stack, first_text, normalise_ids, open_store_for, read_sse

EVENTS = TypeAdapter(ResponseStreamEvent)

WEATHER = {"name": "weather", "arguments": {"city": "Paris"}}
STOCK = {"name": "stock", "arguments": {"symbol": "ACME"}}
TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
SECRET_TOOL = {
    "type": "function",
    "name": "get_secret",
    "description": "A secret only the client knows.",
    "parameters": {"type": "object", "properties": {}},
}


def _types(events: list[Any]) -> list[str]:
    return [event.type for event in events]


async def test_plain_create_returns_the_assembled_response(stack: Stack) -> None:
    stack.script(
        "hello",
        [
            {
                "content": "Hello there, friend.",
                "usage": {"prompt_tokens": 7, "completion_tokens": 4},
            }
        ],
    )

    response = await stack.client.responses.create(model="hello", input="Hi!")

    assert response.status == "completed"
    assert response.output_text == "Hello there, friend."
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 4)
    assert response.usage.total_tokens == 11
    fetched = await stack.client.responses.retrieve(response.id)
    assert fetched.model_dump() == response.model_dump()
    sent = stack.model.requests("hello")[0]["messages"]
    assert sent == [{"role": "user", "content": "Hi!"}]


async def test_stream_is_the_whole_expected_event_sequence(stack: Stack) -> None:
    stack.script(
        "story",
        [{"content": "one two three", "usage": {"prompt_tokens": 3, "completion_tokens": 3}}],
    )

    stream = await stack.client.responses.create(model="story", input="count", stream=True)
    events = [event async for event in stream]

    for event in events:
        EVENTS.validate_python(event.model_dump())
    assert [event.sequence_number for event in events] == list(range(len(events)))
    message = {"id": "<msg:0>", "type": "message", "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": []}
    delta = {
        "type": "response.output_text.delta",
        "item_id": "<msg:0>",
        "output_index": 0,
        "content_index": 0,
        "logprobs": [],
    }
    expected = [
        ("response.created", None),
        ("response.in_progress", None),
        (
            "response.output_item.added",
            {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}},
        ),
        (
            "response.content_part.added",
            {
                "item_id": "<msg:0>",
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": ""},
            },
        ),
        ("response.output_text.delta", {**delta, "delta": "one"}),
        ("response.output_text.delta", {**delta, "delta": " two"}),
        ("response.output_text.delta", {**delta, "delta": " three"}),
        (
            "response.output_text.done",
            {
                "item_id": "<msg:0>",
                "output_index": 0,
                "content_index": 0,
                "text": "one two three",
                "logprobs": [],
            },
        ),
        (
            "response.content_part.done",
            {
                "item_id": "<msg:0>",
                "output_index": 0,
                "content_index": 0,
                "part": {**part, "text": "one two three"},
            },
        ),
        (
            "response.output_item.done",
            {
                "output_index": 0,
                "item": {
                    **message,
                    "status": "completed",
                    "content": [{**part, "text": "one two three"}],
                    "phase": "final_answer",
                },
            },
        ),
        ("response.completed", None),
    ]
    names: dict[str, str] = {}
    got = [normalise_ids(event.model_dump(exclude_none=True), names) for event in events]
    assert [event["type"] for event in got] == [kind for kind, _ in expected]
    for event, (kind, fields) in zip(got, expected, strict=True):
        if fields is not None:
            assert {k: v for k, v in event.items() if k not in ("sequence_number", "type")} == {
                k: v for k, v in fields.items() if k != "type"
            }, kind
    created, in_progress, completed = got[0], got[1], got[-1]
    assert created["response"]["status"] == in_progress["response"]["status"] == "in_progress"
    assert created["response"]["output"] == []
    assert completed["response"]["status"] == "completed"
    assert completed["response"]["output"] == [got[-2]["item"]]
    assert completed["response"]["usage"]["total_tokens"] == 6


async def test_stream_helper_gets_the_final_response(stack: Stack) -> None:
    stack.script("helper", [{"content": "Final words."}])

    async with stack.client.responses.stream(model="helper", input="go") as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()

    assert "".join(texts) == "Final words."
    assert final.output_text == "Final words."
    assert final.status == "completed"


async def test_parallel_server_tools_then_a_follow_up_call(stack: Stack) -> None:
    stack.script(
        "fanout",
        [
            {
                "tool_calls": [WEATHER, STOCK],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            },
            {
                "content": "Sunny, and ACME is up.",
                "usage": {"prompt_tokens": 30, "completion_tokens": 6},
            },
        ],
    )

    response = await stack.client.responses.create(model="fanout", input="weather and stock?")

    assert response.status == "completed"
    assert [item.type for item in response.output] == ["mcp_call", "mcp_call", "message"]
    weather, stock, _ = response.output
    assert weather.type == "mcp_call" and stock.type == "mcp_call"
    assert (weather.name, weather.status, weather.server_label) == (
        "weather",
        "completed",
        "stepline",
    )
    assert orjson.loads(weather.output or "") == {"city": "Paris", "conditions": "sunny"}
    assert stock.output == 'stock result for {"symbol":"ACME"}'
    assert response.output_text == "Sunny, and ACME is up."
    assert response.usage is not None and response.usage.total_tokens == 51
    assert stack.tools.calls == {"weather": 1, "stock": 1}
    assert stack.tools.keys["weather"][0].startswith("step_")
    assert stack.tools.keys["weather"] != stack.tools.keys["stock"]
    follow_up = stack.model.requests("fanout")[1]["messages"]
    calls = follow_up[1]["tool_calls"]
    assert follow_up[0] == {"role": "user", "content": "weather and stock?"}
    assert [call["function"]["name"] for call in calls] == ["weather", "stock"]
    assert follow_up[2:] == [
        {
            "role": "tool",
            "tool_call_id": calls[0]["id"],
            "content": '{"city":"Paris","conditions":"sunny"}',
        },
        {
            "role": "tool",
            "tool_call_id": calls[1]["id"],
            "content": 'stock result for {"symbol":"ACME"}',
        },
    ]


async def test_fan_out_stream_keeps_one_sequence_and_output_index(stack: Stack) -> None:
    stack.script("fanout-stream", [{"tool_calls": [WEATHER, STOCK]}, {"content": "done"}])

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={"model": "fanout-stream", "input": "go", "stream": True},
    ) as reply:
        events = await read_sse(reply)

    for event in events:
        EVENTS.validate_python(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    added = [
        event["output_index"] for event in events if event["type"] == "response.output_item.added"
    ]
    assert added == [0, 1, 2]
    done = {
        event["output_index"]: event["item"]["status"]
        for event in events
        if event["type"] == "response.output_item.done"
    }
    assert done == {0: "completed", 1: "completed", 2: "completed"}
    assert [event["type"] for event in events].count("response.completed") == 1
    assert events[-1]["type"] == "response.completed"
    assert [item["type"] for item in events[-1]["response"]["output"]] == [
        "mcp_call",
        "mcp_call",
        "message",
    ]


async def test_sub_agent_runs_in_its_own_scope_and_counts_in_usage(stack: Stack) -> None:
    stack.script(
        "boss",
        [
            {
                "tool_calls": [{"name": "researcher", "arguments": {"input": "weather in Oslo?"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            },
            {
                "content": "The researcher says sunny.",
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            },
        ],
    )
    stack.script(
        "researcher",
        [
            {
                "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10},
            },
            {
                "content": "Oslo is sunny.",
                "usage": {"prompt_tokens": 100, "completion_tokens": 100},
            },
        ],
    )

    response = await stack.client.responses.create(model="boss", input="ask the researcher")

    assert response.status == "completed"
    agent_call = response.output[0]
    assert agent_call.type == "mcp_call"
    assert (agent_call.name, agent_call.output) == ("researcher", "Oslo is sunny.")
    assert response.output_text == "The researcher says sunny."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (112, 112)
    first_sub_call = stack.model.requests("researcher")[0]["messages"]
    assert first_sub_call == [
        {"role": "system", "content": "You research things."},
        {"role": "user", "content": "weather in Oslo?"},
    ]
    assert stack.tools.bodies["weather"] == [{"city": "Oslo"}]
    # the parent's follow-up sees the agent's answer, never the agent's own steps
    parent_follow_up = stack.model.requests("boss")[1]["messages"]
    assert [m["role"] for m in parent_follow_up] == ["user", "assistant", "tool"]
    assert parent_follow_up[2]["content"] == "Oslo is sunny."


async def test_client_tool_goes_back_and_continues_with_previous_response_id(
    stack: Stack,
) -> None:
    stack.script(
        "client",
        [
            {"tool_calls": [{"name": "get_secret", "arguments": {}, "id": "call_secret"}]},
            {"content": "The secret is 42."},
        ],
    )

    first = await stack.client.responses.create(
        model="client",
        input="what is the secret?",
        tools=[SECRET_TOOL],  # type: ignore[list-item]
    )

    assert first.status == "completed"
    assert [item.type for item in first.output] == ["function_call"]
    call = first.output[0]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_secret",
        "get_secret",
        "{}",
        "completed",
    )

    second = await stack.client.responses.create(
        model="client",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_secret", "output": "42"}],
        tools=[SECRET_TOOL],  # type: ignore[list-item]
    )

    assert second.output_text == "The secret is 42."
    assert second.previous_response_id == first.id
    messages = stack.model.requests("client")[1]["messages"]
    assert messages == [
        {"role": "user", "content": "what is the secret?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_secret",
                    "type": "function",
                    "function": {"name": "get_secret", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_secret", "content": "42"},
    ]


async def test_mixed_fan_out_runs_server_calls_and_returns_only_client_calls(
    stack: Stack,
) -> None:
    stack.script(
        "mixed",
        [
            {"tool_calls": [WEATHER, {"name": "get_secret", "arguments": {}, "id": "call_c"}]},
            {"content": "All done."},
        ],
    )

    first = await stack.client.responses.create(
        model="mixed",
        input="both",
        tools=[SECRET_TOOL],  # type: ignore[list-item]
    )

    assert first.status == "completed"
    assert [item.type for item in first.output] == ["mcp_call", "function_call"]
    assert first.output[0].type == "mcp_call" and first.output[0].status == "completed"
    assert stack.tools.calls == {"weather": 1}
    second = await stack.client.responses.create(
        model="mixed",
        previous_response_id=first.id,
        tools=[SECRET_TOOL],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": "call_c", "output": "s3cret"}],
    )
    assert second.output_text == "All done."
    messages = stack.model.requests("mixed")[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert {m["tool_call_id"]: m["content"] for m in messages[2:]} == {
        messages[1]["tool_calls"][0]["id"]: '{"city":"Paris","conditions":"sunny"}',
        "call_c": "s3cret",
    }
    assert stack.tools.calls == {"weather": 1}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"name": "hang", "arguments": {}}, "Error: tool 'hang' timed out after 0.3s"),
        ({"name": "fail", "arguments": {}}, "Error: tool 'fail' answered HTTP 500: tool exploded"),
        (
            {"name": "weather", "arguments": '{"city": "Par'},
            "Error: arguments for tool 'weather' are not valid JSON",
        ),
        (
            {"name": "weather", "arguments": {"city": 3}},
            "Error: arguments for tool 'weather' do not match its schema at city: "
            "3 is not of type 'string'",
        ),
        (
            {"name": "teleport", "arguments": {}},
            "Error: tool 'teleport' does not exist; the tools you may call are: "
            "fail, hang, researcher, stock, weather",
        ),
    ],
    ids=["timeout", "non-2xx", "bad-json", "schema", "unknown-tool"],
)
async def test_tool_errors_go_back_to_the_model(
    stack: Stack, call: dict[str, Any], error: str
) -> None:
    stack.script("recover", [{"tool_calls": [call]}, {"content": "I recovered."}])

    response = await stack.client.responses.create(model="recover", input="try it")

    assert response.status == "completed"
    assert response.output_text == "I recovered."
    failed = response.output[0]
    assert failed.type == "mcp_call" and failed.status == "failed"
    tool_message = stack.model.requests("recover")[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith(error)


async def test_tool_errors_fail_the_response_when_configured(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(tool_errors="fail")
    stack.script(
        "strict", [{"tool_calls": [{"name": "fail", "arguments": {}}]}, {"content": "never"}]
    )

    response = await stack.client.responses.create(model="strict", input="go")

    assert response.status == "failed"
    assert response.error is not None
    assert response.error.code == "server_error"
    assert "tool 'fail' failed: tool 'fail' answered HTTP 500" in response.error.message
    assert len(stack.model.requests("strict")) == 1


async def test_upstream_error_fails_the_response_with_its_message(stack: Stack) -> None:
    stack.script("broken", [{"fault": {"status": 500, "message": "the GPU caught fire"}}])

    response = await stack.client.responses.create(model="broken", input="hi")

    assert response.status == "failed"
    assert response.error is not None
    assert response.error.code == "server_error"
    assert response.error.model_dump()["type"] == "model_error"
    assert "the GPU caught fire" in response.error.message


async def test_upstream_error_stream_ends_with_error_then_failed(stack: Stack) -> None:
    stack.script("broken-stream", [{"fault": {"status": 400, "message": "context too long"}}])

    async with stack.http.stream(
        "POST", "/v1/responses", json={"model": "broken-stream", "input": "hi", "stream": True}
    ) as reply:
        events = await read_sse(reply)

    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert "context too long" in events[2]["message"]
    assert events[3]["response"]["error"] == {
        "code": "server_error",
        "type": "model_error",
        "message": events[2]["message"],
    }
    for event in events:
        EVENTS.validate_python(event)


async def test_max_iterations_ends_incomplete(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(max_iterations=3)
    stack.script("forever", [{"tool_calls": [WEATHER]}], repeat_last=True)

    response = await stack.client.responses.create(model="forever", input="loop")

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_iterations"  # type: ignore[comparison-overlap]
    assert len(stack.model.requests("forever")) == 3
    assert stack.tools.calls == {"weather": 3}


async def test_max_tool_calls_ends_incomplete(stack: Stack) -> None:
    stack.script("greedy", [{"tool_calls": [WEATHER, STOCK]}, {"content": "never"}])

    response = await stack.client.responses.create(model="greedy", input="go", max_tool_calls=1)

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_tool_calls"  # type: ignore[comparison-overlap]
    assert stack.tools.calls == {}


def _untimed(value: Any) -> Any:
    """``value`` without its timestamps (``created_at``, ``completed_at``)."""
    if isinstance(value, dict):
        return {
            key: _untimed(item)
            for key, item in value.items()
            if key not in ("created_at", "completed_at")
        }
    if isinstance(value, list):
        return [_untimed(item) for item in value]
    return value


async def test_disconnected_client_does_not_stop_the_loop(stack: Stack) -> None:
    """The client leaves while the final text streams: the loop goes on in the same
    process, in the same run. A loop cancelled by the disconnect would still end (this
    process claims its released lease a few seconds later and resumes it), but only by
    asking the model again for the text it was streaming."""
    words = [f"w{i}" for i in range(50)]
    stack.script(
        "long", [{"tool_calls": [WEATHER]}, {"content": " ".join(words), "token_delay": 0.01}]
    )

    seen: list[dict[str, Any]] = []
    async with stack.http.stream(
        "POST", "/v1/responses", json={"model": "long", "input": "go", "stream": True}
    ) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                seen.append(orjson.loads(line[len("data: ") :]))
                if seen[-1]["type"] == "response.output_text.delta":
                    break  # gone, mid final text
    response_id = seen[0]["response"]["id"]

    # follow the stored log from the start until the loop ends without any client,
    # resuming as a client would if a stream ended before [DONE]
    events: list[dict[str, Any]] = []
    for _ in range(5):
        after = events[-1]["sequence_number"] if events else -1
        async with stack.http.stream(
            "GET",
            f"/v1/responses/{response_id}",
            params={"stream": "true", "starting_after": after},
        ) as replay:
            blocks = [block for block in (await replay.aread()).decode().split("\n\n") if block]
        done = bool(blocks) and blocks[-1] == "data: [DONE]"
        events += [
            orjson.loads(block.split("data: ", 1)[1]) for block in blocks[: -1 if done else None]
        ]
        if done:
            break
    assert events[: len(seen)] == seen
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    kinds = [event["type"] for event in events]
    assert [kind for kind in kinds if kind in TERMINAL] == ["response.completed"]
    assert kinds[-1] == "response.completed"
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    assert "".join(deltas) == " ".join(words)  # streamed once, never restarted
    # one run: the model was asked once per turn, the tool called once
    assert len(stack.model.requests("long")) == 2
    assert stack.tools.calls == {"weather": 1}
    # and the log is, event for event, what a client that stayed gets
    async with stack.http.stream(
        "POST", "/v1/responses", json={"model": "long", "input": "go", "stream": True}
    ) as reply:
        stayed = await read_sse(reply)
    assert _untimed(normalise_ids(events)) == _untimed(normalise_ids(stayed))
    final = await stack.client.responses.retrieve(response_id)
    assert final.status == "completed"
    assert final.output_text == " ".join(words)


async def test_replay_with_starting_after_returns_the_same_events(stack: Stack) -> None:
    stack.script("replay", [{"tool_calls": [WEATHER]}, {"content": "a b c d"}])
    async with stack.http.stream(
        "POST", "/v1/responses", json={"model": "replay", "input": "go", "stream": True}
    ) as reply:
        live = await read_sse(reply)
    response_id = live[0]["response"]["id"]

    async with stack.http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 5}
    ) as reply:
        tail = await read_sse(reply)
    async with stack.http.stream(
        "GET",
        f"/v1/responses/{response_id}",
        params={"stream": "true"},
        headers={"Last-Event-ID": "9"},
    ) as reply:
        from_header = await read_sse(reply)
    async with stack.http.stream(
        "GET", f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": 999}
    ) as reply:
        past_the_end = await read_sse(reply)

    assert tail == live[6:]
    assert from_header == live[10:]
    assert past_the_end == []


async def test_get_delete_and_input_items(stack: Stack) -> None:
    stack.script("items", [{"content": "ok"}])
    response = await stack.client.responses.create(
        model="items",
        input=[{"role": "user", "content": "first"}, {"role": "user", "content": "second"}],
        metadata={"team": "platform"},
    )

    items = await stack.client.responses.input_items.list(response.id)
    assert [first_text(item) for item in items.data] == ["second", "first"]
    ascending = await stack.client.responses.input_items.list(response.id, order="asc", limit=1)
    assert [first_text(item) for item in ascending.data] == ["first"]
    assert ascending.has_more is True
    assert response.metadata == {"team": "platform"}

    deleted = await stack.http.delete(f"/v1/responses/{response.id}")
    assert deleted.json() == {"id": response.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.retrieve(response.id)


async def test_store_false_is_not_retrievable(stack: Stack) -> None:
    stack.script("ephemeral", [{"content": "gone soon"}])

    response = await stack.client.responses.create(model="ephemeral", input="hi", store=False)

    assert response.output_text == "gone soon"
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.retrieve(response.id)
    # nothing of it is kept: not its record, its steps nor its events
    store = await open_store_for(stack)
    try:
        assert await store.get_response(response.id) is None
        assert await store.load_steps(response.id) == []
        assert await store.read_events(response.id, after=-1, limit=10) == []
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input": "hi", "temperature": 5}, "temperature"),
        ({"model": "m"}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": "m", "input": [{"type": "bogus"}]}, "input[0]"),
        ({"model": "m", "input": "hi", "tools": [{"type": "teleport"}]}, "tools[0].type"),
        (
            {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "weather"}]},
            "tools[0].name",
        ),
        (
            {
                "model": "m",
                "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}],
            },
            "input",
        ),
    ],
)
async def test_bad_requests_are_400_with_the_param(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    reply = await stack.http.post("/v1/responses", json=body)

    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"].startswith(param)
    assert error["message"]


async def test_not_json_and_unknown_ids_are_clear_errors(stack: Stack) -> None:
    reply = await stack.http.post(
        "/v1/responses", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "body"

    with pytest.raises(openai.NotFoundError) as missing:
        await stack.client.responses.create(model="m", input="hi", previous_response_id="resp_x")
    assert "resp_x" in str(missing.value)
    for method, path in [
        ("GET", "/v1/responses/resp_missing"),
        ("DELETE", "/v1/responses/resp_missing"),
        ("GET", "/v1/responses/resp_missing/input_items"),
        ("GET", "/v1/responses/resp_missing?stream=true"),
    ]:
        reply = await stack.http.request(method, path)
        assert reply.status_code == 404, path
        assert reply.json()["error"]["type"] == "not_found"


async def test_a_sub_agents_long_output_is_cut_for_the_model(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(max_tool_output_chars=10)
    stack.script(
        "boss-cut",
        [
            {"tool_calls": [{"name": "researcher", "arguments": {"input": "go"}}]},
            {"content": "ok"},
        ],
    )
    stack.script("researcher", [{"content": "Oslo is sunny today."}])

    response = await stack.client.responses.create(model="boss-cut", input="ask")

    assert response.output[0].type == "mcp_call"
    assert response.output[0].output == "Oslo is su\n[truncated: 10 more characters]"
    assert stack.model.requests("boss-cut")[1]["messages"][-1]["content"] == (
        "Oslo is su\n[truncated: 10 more characters]"
    )


async def test_max_depth_stops_a_sub_agent_and_tells_the_model(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(max_depth=0)
    stack.script(
        "too-deep",
        [
            {"tool_calls": [{"name": "researcher", "arguments": {"input": "go"}}]},
            {"content": "I could not ask the researcher."},
        ],
    )

    response = await stack.client.responses.create(model="too-deep", input="ask")

    assert response.status == "completed"
    call = response.output[0]
    assert call.type == "mcp_call"
    assert call.status == "failed"
    assert stack.model.requests("researcher") == []
    assert stack.model.requests("too-deep")[1]["messages"][-1]["content"] == (
        "Error: agent 'researcher' not run: max_depth 0 reached"
    )


async def test_a_response_whose_terminal_event_a_client_saw_reads_as_ended(stack: Stack) -> None:
    """Read-your-writes: the GET right after response.completed never says in_progress."""
    stack.script("ryw", [{"content": "done"}], repeat_last=True)
    statuses: list[str] = []
    for _ in range(30):
        async with stack.http.stream(
            "POST", "/v1/responses", json={"model": "ryw", "input": "go", "stream": True}
        ) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: {") and '"type":"response.completed"' in line:
                    response_id = orjson.loads(line[len("data: ") :])["response"]["id"]
                    got = await stack.http.get(f"/v1/responses/{response_id}")
                    statuses.append(got.json()["status"])
                    break
    assert statuses == ["completed"] * 30
