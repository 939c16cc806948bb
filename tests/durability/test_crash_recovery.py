"""kill -9 in the middle of a response; a new process takes it over and finishes it.

Each test kills stepline at a chosen moment (a model call streaming, a
fan-out with one tool in flight, a sub-agent with its tool in flight),
starts a new process on the same database and config, and checks that the
response completes with the right transcript, that no step that had
completed ran again, and that a client resuming the stream sees every event
once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from tests.durability.conftest import (
    DONE,
    TERMINAL_EVENTS,
    Harness,
    StoredStep,
    chain_problems,
    client_for,
    message_events,
    output_text,
    replay,
    seqs_of,
    sse_events,
    stored_steps,
    text_deltas,
    types_of,
    without_extensions,
)

WORDS = [f"word{i}" for i in range(40)]
TEXT = " ".join(WORDS)


def _added_items(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [
        (event["output_index"], event["item"]["id"])
        for event in events
        if event["type"] == "response.output_item.added"
    ]


def _done_items(events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [
        (event["output_index"], event["item"])
        for event in events
        if event["type"] == "response.output_item.done"
    ]


def _assert_whole_stream(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    """One stream of one response: numbered 0..m, one terminal event last, every
    output item added once and done once, in the order and shape of the final output."""
    assert seqs_of(events) == list(range(len(events)))
    terminal = [event["type"] for event in events if event["type"] in TERMINAL_EVENTS]
    assert terminal == ["response.completed"]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"] == final
    assert _added_items(events) == [
        (index, item["id"]) for index, item in enumerate(final["output"])
    ]
    assert sorted(_done_items(events), key=lambda pair: pair[0]) == list(enumerate(final["output"]))


def _unchanged(before: dict[str, StoredStep], after: list[StoredStep]) -> list[str]:
    """Steps that had completed before the kill and were touched afterwards."""
    now = {step.id: step for step in after}
    return [
        f"#{step.sequence} {step.kind} attempt {step.attempt} -> {now[step.id].attempt}"
        for step in before.values()
        if now.get(step.id) != step
    ]


@pytest.mark.timeout(120)
async def test_kill9_while_a_model_call_streams(harness: Harness) -> None:
    harness.script("storyteller", [{"content": TEXT, "token_delay": 0.05}])
    server = await harness.server()

    before: list[dict[str, Any]] = []
    async with client_for(server) as client:
        # the kill cuts the stream: the client keeps what it had read
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream(
                "POST",
                "/v1/responses",
                json={"model": "storyteller", "input": "tell a story", "stream": True},
            ) as reply:
                assert reply.status_code == 200
                async for item in sse_events(reply):
                    assert item != DONE, "the stream finished before the kill"
                    assert isinstance(item, dict)
                    before.append(item)
                    if types_of(before).count("response.output_text.delta") == 3:
                        server.kill9()
    assert not server.running
    assert types_of(before).count("response.output_text.delta") >= 3
    response_id = before[0]["response"]["id"]
    last_seen = before[-1]["sequence_number"]

    await server.start()
    async with client_for(server) as client:
        resumed = await replay(client, response_id, starting_after=last_seen)
        final = (await client.get(f"/v1/responses/{response_id}")).json()
        whole = await replay(client, response_id)
    after = resumed.events

    assert final["status"] == "completed"
    assert output_text(final) == TEXT
    assert [item["type"] for item in final["output"]] == ["message"]
    # the resuming client: every event after N once, numbered on, one terminal, [DONE]
    assert seqs_of(before) == list(range(last_seen + 1))
    assert seqs_of(after) == list(range(last_seen + 1, last_seen + 1 + len(after)))
    assert (resumed.done, resumed.done_last) == (1, True)
    assert [e["type"] for e in after if e["type"] in TERMINAL_EVENTS] == ["response.completed"]
    assert after[-1]["type"] == "response.completed"
    # the partial output is not shown twice: what the client saw is the text, once
    assert text_deltas(before) + text_deltas(after) == TEXT
    # what it saw before and after is the stored stream, and that is one whole stream
    assert before + after == whole.events
    assert types_of(without_extensions(before + after)) == message_events(len(WORDS))
    _assert_whole_stream(before + after, final)
    assert harness.model.attempts("storyteller", 0) == 2
    assert chain_problems(harness.database, response_id) == []


FAN_OUT: list[dict[str, Any]] = [
    {
        "tool_calls": [
            {"name": "quick", "arguments": {"x": "a"}},
            {"name": "block", "arguments": {"x": "b"}},
        ]
    },
    {"content": "Both tools answered."},
]


@pytest.mark.timeout(120)
async def test_kill9_while_one_tool_of_a_fan_out_is_in_flight(harness: Harness) -> None:
    harness.script("fanout", FAN_OUT)
    tools = harness.tools
    server = await harness.server()
    async with client_for(server) as client:
        created = await client.post(
            "/v1/responses", json={"model": "fanout", "input": "go", "background": True}
        )
        assert created.status_code == 200, created.text
        response_id = created.json()["id"]
        await tools.wait_calls("block", 1)
        await tools.wait_calls("quick", 1)
        # quick's step is stored as completed before the kill (GET reads the steps)
        async with asyncio.timeout(10):
            while True:
                body = (await client.get(f"/v1/responses/{response_id}")).json()
                status = {item.get("name"): item["status"] for item in body["output"]}
                if status.get("quick") == "completed":
                    break
                await asyncio.sleep(0.05)
    server.kill9()
    steps = stored_steps(harness.database, response_id)
    completed = {step.id: step for step in steps if step.state == "completed"}
    block_step = next(step for step in steps if step.request.get("name") == "block")
    quick_step = next(step for step in steps if step.request.get("name") == "quick")
    assert quick_step.id in completed
    assert block_step.state == "processing"

    await server.start()
    await tools.wait_calls("block", 2)
    tools.release.set()
    async with client_for(server) as client:
        whole = await replay(client, response_id)
        final = (await client.get(f"/v1/responses/{response_id}")).json()

    assert final["status"] == "completed", final
    assert [(item["type"], item["name"], item["status"]) for item in final["output"][:2]] == [
        ("mcp_call", "quick", "completed"),
        ("mcp_call", "block", "completed"),
    ]
    assert final["output"][0]["output"] == 'quick result for {"x":"a"}'
    assert final["output"][1]["output"] == 'block result for {"x":"b"}'
    assert output_text(final) == "Both tools answered."
    # completed steps never run again; the one in flight runs again under its step id
    assert tools.calls["quick"] == 1
    assert tools.keys["quick"] == [quick_step.id]
    assert tools.calls["block"] == 2
    assert tools.keys["block"] == [block_step.id, block_step.id]
    assert _unchanged(completed, stored_steps(harness.database, response_id)) == []
    assert harness.model.attempts("fanout", 0) == 1
    assert harness.model.attempts("fanout", 1) == 1
    tool_messages = [
        (message["tool_call_id"], message["content"])
        for message in harness.model.requests("fanout")[-1]["messages"]
        if message["role"] == "tool"
    ]
    assert tool_messages == [
        ("call_0_0", 'quick result for {"x":"a"}'),
        ("call_0_1", 'block result for {"x":"b"}'),
    ]
    assert (whole.done, whole.done_last) == (1, True)
    _assert_whole_stream(whole.events, final)
    assert chain_problems(harness.database, response_id) == []


@pytest.mark.timeout(120)
async def test_kill9_while_a_sub_agent_runs(harness: Harness) -> None:
    harness.script(
        "boss",
        [
            {"tool_calls": [{"name": "researcher", "arguments": {"input": "find the answer"}}]},
            {"content": "The researcher says: found it."},
        ],
    )
    harness.script(
        "researcher",
        [{"tool_calls": [{"name": "block", "arguments": {"x": "deep"}}]}, {"content": "found it"}],
    )
    tools = harness.tools
    server = await harness.server()
    async with client_for(server) as client:
        created = await client.post(
            "/v1/responses", json={"model": "boss", "input": "ask", "background": True}
        )
        assert created.status_code == 200, created.text
        response_id = created.json()["id"]
    await tools.wait_calls("block", 1)
    server.kill9()
    steps = stored_steps(harness.database, response_id)
    completed = {step.id: step for step in steps if step.state == "completed"}
    agent_step = next(step for step in steps if step.request.get("name") == "researcher")
    block_step = next(step for step in steps if step.request.get("name") == "block")
    assert block_step.scope == agent_step.id
    assert [(s.kind, s.scope is None) for s in completed.values()] == [
        ("model_call", True),
        ("model_call", False),
    ]

    await server.start()
    await tools.wait_calls("block", 2)
    tools.release.set()
    async with client_for(server) as client:
        whole = await replay(client, response_id)
        final = (await client.get(f"/v1/responses/{response_id}")).json()

    assert final["status"] == "completed", final
    assert [(item["type"], item.get("name")) for item in final["output"]] == [
        ("mcp_call", "researcher"),
        ("message", None),
    ]
    assert final["output"][0]["status"] == "completed"
    assert final["output"][0]["output"] == "found it"
    assert output_text(final) == "The researcher says: found it."
    assert tools.keys["block"] == [block_step.id, block_step.id]
    assert _unchanged(completed, stored_steps(harness.database, response_id)) == []
    attempts = {
        (name, turn): harness.model.attempts(name, turn)
        for name in ("boss", "researcher")
        for turn in (0, 1)
    }
    assert attempts == {
        ("boss", 0): 1,
        ("boss", 1): 1,
        ("researcher", 0): 1,
        ("researcher", 1): 1,
    }
    assert (whole.done, whole.done_last) == (1, True)
    _assert_whole_stream(whole.events, final)
    assert chain_problems(harness.database, response_id) == []
