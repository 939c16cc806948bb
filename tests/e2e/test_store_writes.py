"""How many writes a response costs the store, counted at the store's interface.

A response is stored by its run with its first step and its first events, in
one write. A plain response's client reads only its end: its events wait in
memory and go with its steps' ends, and the last model call's end goes with
the response's, so one model call costs two writes. A streamed response stores
its events as they come (a client reads them), but its last step's end still
goes with the response's. A step whose end a later step depends on is stored
before that step starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._steps import NewStep, Step, StepKind
from stepline.scripted import serve_app
from stepline.scripted._script import Script
from stepline.scripted._server import ScriptedModel, create_scripted_app
from stepline.store._base import Appended, EventRow, ResponseEnd, ResponseRecord, StepEnd
from stepline.store._memory import MemoryStore

pytestmark = pytest.mark.timeout(60)


class CountingStore(MemoryStore):
    """A MemoryStore that notes each write a response makes, in order.

    With ``gate`` set, creating a response waits for it (``creating`` is set
    once a creation waits), to hold a run at that point."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        #: how often a response's steps were read back
        self.step_reads = 0
        self.gate: asyncio.Event | None = None
        self.creating = asyncio.Event()
        self.app: Starlette | None = None
        #: stall the process past its lease once tool calls are recorded
        self.stall_after_tools = False
        #: per event write: the steps whose items' done events it stores, the steps it ends
        self.done_and_ended: list[tuple[set[str], set[str]]] = []

    async def create_response(
        self,
        record: ResponseRecord,
        *,
        steps: Sequence[NewStep] = (),
        events: Sequence[EventRow] = (),
    ) -> list[Step]:
        with_steps = f"+{len(steps)} steps" if steps else ""
        with_events = "+events" if events else ""
        self.writes.append(f"create{with_steps}{with_events}")
        if self.gate is not None:
            self.creating.set()
            await self.gate.wait()
        return await super().create_response(record, steps=steps, events=events)

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        self.writes.append(f"record {len(steps)}")
        recorded = await super().record_steps(response_id, scope=scope, steps=steps, start=start)
        if self.stall_after_tools and any(step.kind is StepKind.TOOL_CALL for step in steps):
            # the process stalls right after the write, past its lease: its clock jumps
            assert self.app is not None
            engine = self.app.state.runner.engine
            engine.clock = lambda: time.time() + 3600
        return recorded

    async def load_steps(self, response_id: str) -> list[Step]:
        self.step_reads += 1
        return await super().load_steps(response_id)

    async def start_step(self, step_id: str) -> Step:
        self.writes.append("start")
        return await super().start_step(step_id)

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        kinds = "".join("S" if isinstance(end, StepEnd) else "R" for end in ends)
        self.writes.append(f"events{'+' + kinds if kinds else ''}")
        done = {
            row.step_id
            for row in rows
            if row.step_id is not None and b'"response.output_item.done"' in row.data
        }
        self.done_and_ended.append(
            (done, {end.step_id for end in ends if isinstance(end, StepEnd)})
        )
        return await super().append_events(rows, ends=ends, owner=owner)


async def _lookup(request: Request) -> Response:
    return Response(b'{"found": true}', media_type="application/json")


@pytest.fixture
async def server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[httpx.AsyncClient, CountingStore]]:
    """The server; ``request.param``, when given, is its ``limits.tool_concurrency``."""
    model = ScriptedModel(demo_token_delay=0)
    model.register("one", Script.from_dict({"turns": [{"content": "forty-two"}]}))
    for name, tool, count in (
        ("two", "add", 1),
        ("looker", "lookup", 1),
        ("looker-twice", "lookup", 2),
    ):
        calls = [{"name": tool, "arguments": {"n": n}} for n in range(count)]
        model.register(
            name, Script.from_dict({"turns": [{"tool_calls": calls}, {"content": "done"}]})
        )
    tools = Starlette(routes=[Route("/lookup", _lookup, methods=["POST"])])
    async with (
        serve_app(create_scripted_app(model)) as upstream,
        serve_app(tools) as tools_url,
    ):
        settings = Settings.model_validate(
            {
                "upstreams": {"u": {"base_url": f"{upstream}/v1"}},
                "default_model": {"upstream": "u"},
                "models": [
                    {"name": name, "upstream": "u", "tools": ["lookup"]}
                    for name in ("looker", "looker-twice")
                ],
                "limits": {"tool_concurrency": getattr(request, "param", 8)},
                "tools": {
                    "lookup": {
                        "type": "http",
                        "description": "Look it up.",
                        "url": f"{tools_url}/lookup",
                        "parameters": {"type": "object"},
                    }
                },
            }
        )
        store = CountingStore()
        store.app = create_app(settings, store=store, allow_anonymous=True)
        async with (
            serve_app(store.app) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            yield client, store


async def _create(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    reply = await client.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text
    return reply


async def test_a_plain_model_call_is_two_writes(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    client, store = server

    reply = await _create(client, {"model": "one", "input": "the answer?"})

    [message] = reply.json()["output"]
    assert (reply.json()["status"], message["content"][0]["text"]) == ("completed", "forty-two")
    assert store.writes == ["create+1 steps+events", "events+SR"]
    # the response object is made from the steps the run has, not read back
    assert store.step_reads == 0
    stored = await client.get(f"/v1/responses/{reply.json()['id']}")
    assert stored.json() == reply.json()


async def test_the_lease_keeper_leaves_a_run_that_has_not_stored_its_response_yet(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """A plain request's run stores the response with its first step: a renewal in
    between finds no row to renew, and must not take that for a lost lease."""
    client, store = server
    store.gate = asyncio.Event()
    reply = asyncio.create_task(_create(client, {"model": "one", "input": "the answer?"}))
    await asyncio.wait_for(store.creating.wait(), 10)
    assert store.app is not None
    runner = store.app.state.runner
    [running] = list(runner.tasks)
    assert await store.get_response(running) is None

    await runner.renew()
    store.gate.set()

    assert (await reply).json()["status"] == "completed"


async def test_a_streamed_model_call_stores_its_events_and_ends_once(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    client, store = server

    reply = await _create(client, {"model": "one", "input": "the answer?", "stream": True})

    assert "response.completed" in reply.text
    # the response, its first step and its first events (created, in_progress) together
    assert store.writes[0] == "create+1 steps+events"
    assert store.writes[-1] == "events+SR"
    # the call's first events are stored before the stream goes on (its client reads them)
    between = store.writes[1:-1]
    assert between and all(write == "events" for write in between)


async def test_what_a_streamed_step_shows_of_its_end_is_stored_with_that_end(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """Model call, server tool, model call, streamed: each step's items' done events
    go in the write that stores the step's end, never in an earlier one."""
    client, store = server

    reply = await _create(client, {"model": "looker", "input": "look it up", "stream": True})

    assert "response.completed" in reply.text
    for done, ended in store.done_and_ended:
        assert done <= ended, store.writes
    shown = set().union(*(done for done, _ in store.done_and_ended))
    first = next(line for line in reply.text.splitlines() if line.startswith("data: "))
    created = json.loads(first.removeprefix("data: "))
    asked, tool, answered = await store.load_steps(created["response"]["id"])
    # the tool call ends the mcp_call item the first model call opened; the last
    # model call ends its message
    assert (asked.kind, tool.kind, answered.kind) == (
        StepKind.MODEL_CALL,
        StepKind.TOOL_CALL,
        StepKind.MODEL_CALL,
    )
    assert shown == {tool.id, answered.id}


async def test_a_client_tool_call_ends_with_the_response(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """The model asks for the client's tool: the run ends with that model call."""
    client, store = server
    tool = {"type": "function", "name": "add", "parameters": {"type": "object"}}

    reply = await _create(client, {"model": "two", "input": "add", "tools": [tool]})

    assert [item["type"] for item in reply.json()["output"]] == ["function_call"]
    assert store.writes == ["create+1 steps+events", "events+SR"]


async def test_a_step_the_run_goes_on_from_is_stored_before_the_next_starts(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """Model call, server tool, model call: only the last model call's end waits."""
    client, store = server

    reply = await _create(client, {"model": "looker", "input": "look it up"})

    types = [item["type"] for item in reply.json()["output"]]
    assert (reply.json()["status"], types) == ("completed", ["mcp_call", "message"])
    assert store.writes == [
        "create+1 steps+events",
        "events+S",  # the model call that asked for the tool
        "record 1",  # the tool call, recorded started: it runs at once
        "events+S",  # the tool call
        "record 1",
        "events+SR",  # the last model call, with the response
    ]


async def test_a_tool_call_recorded_started_that_waited_past_a_lease_is_started_again(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """A process that stalled between recording a tool call and running it may have
    lost it to another process: the store's guarded start decides, before it runs."""
    client, store = server
    store.stall_after_tools = True

    reply = await _create(client, {"model": "looker", "input": "look it up"})

    assert reply.json()["status"] == "completed"
    assert store.writes[:4] == ["create+1 steps+events", "events+S", "record 1", "start"]
    [tool] = [step for step in await store.load_steps(reply.json()["id"]) if step.call_id]
    assert tool.attempt == 2


@pytest.mark.parametrize("server", [1], indirect=True)
async def test_tool_calls_beyond_the_concurrency_limit_are_started_as_they_run(
    server: tuple[httpx.AsyncClient, CountingStore],
) -> None:
    """Two calls, one at a time (``tool_concurrency = 1``): the second waits, so
    neither is recorded started; each is started when it runs."""
    client, store = server

    reply = await _create(client, {"model": "looker-twice", "input": "look both up"})

    types = [item["type"] for item in reply.json()["output"]]
    assert (reply.json()["status"], types) == ("completed", ["mcp_call", "mcp_call", "message"])
    assert store.writes == [
        "create+1 steps+events",
        "events+S",
        "record 2",
        "start",
        "events+S",
        "start",
        "events+S",
        "record 1",
        "events+SR",
    ]
