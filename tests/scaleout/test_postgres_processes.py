"""Several stepline processes on one PostgreSQL database, one of them killed mid-run.

Each response is created on one process and followed through another; a
process is killed with SIGKILL while responses run. Every accepted response
completes once, every follower reads every event exactly once (resuming on
another process with ``starting_after`` when its process dies), and no tool
step runs more often than its recorded attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from stepline.store._sql import open_store
from tests.durability.conftest import (
    TERMINAL_EVENTS,
    Harness,
    ServerProcess,
    client_for,
    sse_events,
)

pytestmark = pytest.mark.postgres

RESPONSES = 100
TEXT = " ".join(f"w{i}" for i in range(12))


async def _follow(
    servers: list[ServerProcess], first: int, response_id: str
) -> list[dict[str, Any]]:
    """Read a response's stream through ``servers[first]``, moving to the next live process
    with ``starting_after`` whenever the one it reads through dies."""
    events: list[dict[str, Any]] = []
    attempt = 0
    while True:
        server = servers[(first + attempt) % len(servers)]
        attempt += 1
        if not server.running:
            continue
        after = events[-1]["sequence_number"] if events else -1
        try:
            async with (
                client_for(server, timeout=60) as client,
                client.stream(
                    "GET",
                    f"/v1/responses/{response_id}",
                    params={"stream": "true", "starting_after": after},
                ) as reply,
            ):
                async for event in sse_events(reply):
                    if event == "[DONE]":
                        return events
                    assert isinstance(event, dict)
                    events.append(event)
        except (httpx.TransportError, httpx.HTTPStatusError):
            pass  # that process died mid-stream: resume through another
        assert attempt < 50, f"could not finish following {response_id}"


async def _create(server: ServerProcess, body: dict[str, Any]) -> str | None:
    """The id of a response created on ``server``, or None if it was refused or died."""
    try:
        async with client_for(server) as client:
            if body.get("stream"):
                async with client.stream("POST", "/v1/responses", json=body) as reply:
                    async for event in sse_events(reply):
                        assert isinstance(event, dict)
                        return str(event["response"]["id"])  # created: follow it elsewhere
                return None
            reply = await client.post("/v1/responses", json=body)
            return str(reply.json()["id"]) if reply.status_code == 200 else None
    except httpx.TransportError:
        return None


@pytest.mark.timeout(180)
async def test_three_processes_share_the_work_and_survive_a_kill(
    harness: Harness, postgres_url: str
) -> None:
    harness.script(
        "fan",
        [
            {
                "tool_calls": [
                    {"name": "quick", "arguments": {"x": "a"}},
                    {"name": "quick", "arguments": {"x": "b"}},
                ]
            },
            {"content": TEXT, "token_delay": 0.03},
        ],
    )
    servers = [await harness.server(database_url=postgres_url) for _ in range(3)]
    created: list[tuple[int, str]] = []

    async def one(index: int) -> None:
        origin = index % 3
        body = {
            "model": "fan",
            "input": f"job {index}",
            "stream": index % 2 == 0,
            "background": index % 2 == 1,
        }
        response_id = await _create(servers[origin], body)
        if response_id is not None:
            created.append((origin, response_id))

    first_wave = [asyncio.create_task(one(i)) for i in range(RESPONSES // 2)]
    await asyncio.gather(*first_wave)
    servers[0].kill9()  # while the first wave's loops run
    await asyncio.gather(*(one(i) for i in range(RESPONSES // 2, RESPONSES)))

    followed = await asyncio.gather(
        *(_follow(servers, origin + 1, response_id) for origin, response_id in created)
    )

    assert len(created) >= RESPONSES * 0.8  # only those sent to the dead process are missing
    for (_, response_id), events in zip(created, followed, strict=True):
        seqs = [event["sequence_number"] for event in events]
        assert seqs == list(range(len(events))), response_id
        terminal = [event["type"] for event in events if event["type"] in TERMINAL_EVENTS]
        assert terminal == ["response.completed"], response_id
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == TEXT, response_id

    store = await open_store(postgres_url, migrate=False)
    try:
        tool_steps: dict[str, int] = {}
        for _, response_id in created:
            record = await store.get_response(response_id)
            assert record is not None and record.status == "completed"
            for step in await store.load_steps(response_id):
                assert step.state.value == "completed", (response_id, step)
                if step.kind.value == "tool_call":
                    tool_steps[step.id] = step.attempt
    finally:
        await store.close()
    calls = harness.tools.keys["quick"]
    assert set(calls) == set(tool_steps)
    for step_id, attempts in tool_steps.items():
        assert calls.count(step_id) <= attempts, step_id


@pytest.mark.timeout(120)
async def test_loops_continue_after_the_database_connections_are_cut(
    harness: Harness, postgres_url: str
) -> None:
    harness.script(
        "slow",
        [
            {"tool_calls": [{"name": "quick", "arguments": {"x": "a"}}]},
            {"content": TEXT, "token_delay": 0.1},
        ],
    )
    servers = [await harness.server(database_url=postgres_url) for _ in range(2)]
    ids = [
        response_id
        for response_id in await asyncio.gather(
            *(
                _create(servers[i % 2], {"model": "slow", "input": "go", "background": True})
                for i in range(10)
            )
        )
        if response_id is not None
    ]
    assert len(ids) == 10
    await harness.tools.wait_calls("quick", 10)

    # cut every connection the processes hold, as a database restart would
    admin = await asyncpg.connect(postgres_url)
    try:
        cut = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert cut > 0

    followed = await asyncio.gather(*(_follow(servers, i, rid) for i, rid in enumerate(ids)))
    for events in followed:
        assert [event["sequence_number"] for event in events] == list(range(len(events)))
        assert events[-1]["type"] == "response.completed"
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == TEXT


async def _read_stream(server: ServerProcess, response_id: str) -> list[dict[str, Any]]:
    """Every event of a response read through ``server``, to its ``[DONE]``."""
    events: list[dict[str, Any]] = []
    async with (
        client_for(server, timeout=60) as client,
        client.stream("GET", f"/v1/responses/{response_id}", params={"stream": "true"}) as reply,
    ):
        async for event in sse_events(reply):
            if event == "[DONE]":
                return events
            assert isinstance(event, dict)
            events.append(event)
    raise AssertionError(f"the stream of {response_id} ended without [DONE]")


def _check_whole(events: list[dict[str, Any]]) -> None:
    """One response's whole stream: contiguous, one terminal event, last; the text once."""
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    terminal = [event["type"] for event in events if event["type"] in TERMINAL_EVENTS]
    assert terminal == ["response.completed"]
    assert events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == TEXT


@pytest.mark.timeout(120)
async def test_a_process_frozen_past_its_lease_writes_nothing_after_the_takeover(
    harness: Harness, postgres_url: str
) -> None:
    """A process too slow to renew (frozen with SIGSTOP mid-stream) loses its responses
    to another; once it runs again its loops stop without a row in their logs, and what
    it serves (a stream it relayed, a plain reply it owed) is what the new owner did."""
    harness.script("slow", [{"content": TEXT, "token_delay": 0.05}])
    frozen, other = [await harness.server(database_url=postgres_url) for _ in range(2)]
    body = {"model": "slow", "input": "go"}
    async with client_for(frozen, timeout=60) as client:
        plain = asyncio.create_task(client.post("/v1/responses", json=body))
        relayed: list[dict[str, Any]] = []
        async with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as reply:
            events = sse_events(reply)
            async for event in events:
                assert isinstance(event, dict)
                relayed.append(event)
                if event["type"] == "response.output_text.delta":
                    frozen.pause()  # mid-stream, while it holds the lease
                    break
            try:
                taken_over = await _read_stream(other, relayed[0]["response"]["id"])
            finally:
                frozen.resume()
            async for event in events:
                if event == "[DONE]":
                    break
                assert isinstance(event, dict)
                relayed.append(event)
        answered = await plain

    _check_whole(taken_over)
    assert relayed == taken_over
    assert answered.status_code == 200
    answer = answered.json()
    assert answer["status"] == "completed"
    # the plain reply is the end its new owner stored and streamed
    plain_events = await _read_stream(other, answer["id"])
    _check_whole(plain_events)
    assert plain_events[-1]["response"] == answer
    # what the frozen process did once it ran again reached no log
    assert await _read_stream(other, relayed[0]["response"]["id"]) == taken_over
    assert await _read_stream(frozen, answer["id"]) == plain_events
