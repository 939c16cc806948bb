"""A few hundred concurrent responses on two processes and PostgreSQL, while faults happen.

Two ``stepline serve`` processes share one PostgreSQL database. Clients send a
mix of plain, streaming and background responses, some fanning out to HTTP
tools, while the scripted upstream answers some model calls with a 503 and
cuts some streams mid-way, a tool never answers within its timeout, every
database connection is cut once, some clients drop their streams mid-way,
and one process is killed with SIGKILL. Each fault is triggered by progress
(tool calls seen), never by a timer.

Then every stored response is terminal, with no step left running, an event
log that is contiguous and ends once, in its status, and a failure only of a
fault the upstream was told to make; every stream a client followed (resuming
with ``starting_after`` on the live process whenever its stream broke) is the
stored log; no tool step ran more often than its recorded attempts; and no
tool whose result a client saw ran again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.scripted import serve_app
from stepline.store._sql import open_store
from tests.durability.conftest import (
    DONE,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Harness,
    ServerProcess,
    client_for,
    free_port,
    sse_events,
    stepline_config,
    to_toml,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(150),
]

RESPONSES = 240
#: the whole run, faults and checks included
BUDGET_SECONDS = 90
TEXT = " ".join(f"w{i}" for i in range(10))
#: a tool that never answers within this is cut off (its step ends with the timeout)
STALL_TIMEOUT = 0.5


@dataclass
class CountingTools:
    """HTTP tools answering ``{"key": <Idempotency-Key>, "call": <calls with that key>}``;
    ``stall`` answers only when released (after its callers timed out)."""

    calls: Counter[str] = field(default_factory=Counter)
    by_tool: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            key = request.headers["idempotency-key"]
            self.calls[key] += 1
            self.by_tool[name] += 1
            answer = orjson.dumps({"key": key, "call": self.calls[key]})
            self._changed.set()
            self._changed = asyncio.Event()
            if name == "stall":
                await self.release.wait()
            return Response(answer, media_type="application/json")

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])

    async def wait_calls(self, count: int) -> None:
        """Until the tools have been called ``count`` times in all."""
        while sum(self.by_tool.values()) < count:
            await self._changed.wait()


def _tool(tools_url: str, name: str, timeout: float) -> dict[str, Any]:
    return {
        "type": "http",
        "description": f"The {name} tool.",
        "url": f"{tools_url}/tools/{name}",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        "timeout": timeout,
    }


def _call(name: str, x: str) -> dict[str, Any]:
    return {"name": name, "arguments": {"x": x}}


#: model name -> script turns: each model plays one kind of trouble
SCRIPTS: dict[str, list[dict[str, Any]]] = {
    "text": [{"content": TEXT, "token_delay": 0.01}],
    "fan": [
        {"tool_calls": [_call("fan", "a"), _call("fan", "b"), _call("fan", "c")]},
        {"content": TEXT, "token_delay": 0.01},
    ],
    # one call never answers in time: its step ends with the timeout, its sibling's not
    "stall": [
        {"tool_calls": [_call("stall", "s"), _call("fan", "t")]},
        {"content": TEXT},
    ],
    # the upstream refuses the first model calls after the tools with a 503 (retried,
    # some past their retries)
    "overloaded": [
        {"tool_calls": [_call("fan", "o")]},
        {"content": TEXT, "fault": {"status": 503, "message": "overloaded", "times": 40}},
    ],
    # the upstream cuts the first streams after a few chunks
    "cut": [
        {"tool_calls": [_call("fan", "c1"), _call("fan", "c2")]},
        {"content": TEXT, "token_delay": 0.01, "fault": {"drop_after": 4, "times": 15}},
    ],
}


#: how a response fails when the upstream's faults outlast its retries
UPSTREAM_FAILURES = ("overloaded", "upstream connection dropped mid-stream")


async def _servers(harness: Harness, tools_url: str, postgres_url: str) -> list[ServerProcess]:
    config = stepline_config(harness.upstream_url, tools_url, upstream={"max_retries": 2})
    config["tools"] = {
        "fan": _tool(tools_url, "fan", timeout=10),
        "stall": _tool(tools_url, "stall", timeout=STALL_TIMEOUT),
    }
    config["default_model"]["tools"] = ["fan", "stall"]
    path = harness.tmp_path / "fault-load.toml"
    path.write_text(to_toml(config))
    servers = [
        ServerProcess(
            config=path,
            database=harness.database,
            port=free_port(),
            log_dir=harness.tmp_path,
            database_url=postgres_url,
        )
        for _ in range(2)
    ]
    harness.servers.extend(servers)
    await asyncio.gather(*(server.start(within=30) for server in servers))
    return servers


@dataclass
class Client:
    """What one client did and saw: the id of its response, and the events it read."""

    index: int
    body: dict[str, Any]
    origin: int
    response_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the tool results (``mcp_call`` outputs) it saw, by item id
    tool_results: dict[str, str] = field(default_factory=dict)

    def saw(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        item = event.get("item") or {}
        done = event["type"] == "response.output_item.done"
        if done and item["type"] == "mcp_call" and item.get("output") is not None:
            self.tool_results[item["id"]] = item["output"]


async def _create(client: Client, servers: list[ServerProcess]) -> None:
    """Send the client's request; for a stream, read it (dropping it mid-way when the
    client is one that leaves). A request its process died under stays unknown."""
    server = servers[client.origin]
    try:
        async with client_for(server, timeout=60) as http:
            if not client.body.get("stream"):
                reply = await http.post("/v1/responses", json=client.body)
                if reply.status_code == 200:
                    client.response_id = reply.json()["id"]
                return
            async with http.stream("POST", "/v1/responses", json=client.body) as reply:
                if reply.status_code != 200:
                    return
                leaves = client.index % 4 == 0
                async for event in sse_events(reply):
                    if event == DONE:
                        return
                    assert isinstance(event, dict)
                    if client.response_id is None:  # response.created
                        client.response_id = event["response"]["id"]
                    client.saw(event)
                    if leaves and event["type"] == "response.output_text.delta":
                        return  # the client goes away mid-stream; it resumes later
    except httpx.TransportError:
        pass  # its process died under it: whatever it read so far stands


async def _follow(client: Client, servers: list[ServerProcess]) -> None:
    """Read the rest of the client's stream to its ``[DONE]``, through its process or
    the other live one, with ``starting_after`` the last event it holds."""
    assert client.response_id is not None
    for attempt in range(200):
        server = servers[(client.origin + attempt) % len(servers)]
        if not server.running:
            continue
        after = client.events[-1]["sequence_number"] if client.events else -1
        try:
            async with (
                client_for(server, timeout=60) as http,
                http.stream(
                    "GET",
                    f"/v1/responses/{client.response_id}",
                    params={"stream": "true", "starting_after": after},
                ) as reply,
            ):
                if reply.status_code == 200:
                    async for event in sse_events(reply):
                        if event == DONE:
                            return
                        assert isinstance(event, dict)
                        client.saw(event)
        except httpx.TransportError:
            pass  # that process died or the database was cut under it: resume
        # a pause before the next try, not a synchronisation: the log is read again
        await asyncio.sleep(0.05)
    raise AssertionError(f"could not follow {client.response_id} to its end")


async def _cut_database_connections(postgres_url: str) -> int:
    admin = await asyncpg.connect(postgres_url)
    try:
        cut: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    return cut


async def _all_terminal(postgres_url: str) -> list[str]:
    """Every stored response id, once none is left running (polled)."""
    admin = await asyncpg.connect(postgres_url)
    try:
        while True:
            rows = await admin.fetch("SELECT id, status FROM responses")
            if all(row["status"] in TERMINAL_STATUSES for row in rows):
                return [row["id"] for row in rows]
            await asyncio.sleep(0.2)  # polling the condition
    finally:
        await admin.close()


def _log_problems(response_id: str, status: str, log: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    if [event["sequence_number"] for event in log] != list(range(len(log))):
        problems.append("its event log is not contiguous from 0")
    terminal = [event["type"] for event in log if event["type"] in TERMINAL_EVENTS]
    if len(terminal) != 1 or log[-1]["type"] not in TERMINAL_EVENTS:
        problems.append(f"terminal events {terminal}, last {log[-1]['type'] if log else None}")
    elif log[-1]["response"]["status"] != status:
        problems.append(f"its terminal event says {log[-1]['response']['status']}, not {status}")
    return [f"{response_id}: {problem}" for problem in problems]


def _step_line(step: Any) -> str:
    name = step.request.get("name", "") if isinstance(step.request, dict) else ""
    scope = f" in {step.scope[-6:]}" if step.scope else ""
    return f"{step.kind.value}({name}){scope} {step.state.value} x{step.attempt}"


async def test_hundreds_of_responses_survive_upstream_tool_database_client_and_process_faults(
    harness: Harness, postgres_url: str
) -> None:
    started = time.monotonic()
    tools = CountingTools()
    async with AsyncExitStack() as exits:
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        exits.callback(tools.release.set)
        for name, turns in SCRIPTS.items():
            harness.script(name, turns)
        servers = await _servers(harness, tools_url, postgres_url)

        models = list(SCRIPTS)
        clients = [
            Client(
                index=index,
                origin=index % 2,
                body={
                    "model": models[index % len(models)],
                    "input": f"job {index}",
                    "stream": index % 3 == 1,
                    "background": index % 3 == 2,
                },
            )
            for index in range(RESPONSES)
        ]
        creating = [asyncio.create_task(_create(client, servers)) for client in clients]

        # the faults from outside, each once the run has got that far
        async with asyncio.timeout(40):
            await tools.wait_calls(60)
            assert await _cut_database_connections(postgres_url) > 0
            await tools.wait_calls(180)
            servers[0].kill9()
        await asyncio.gather(*creating)
        accepted = [client for client in clients if client.response_id is not None]
        await asyncio.gather(*(_follow(client, servers) for client in accepted))
        stored_ids = await _all_terminal(postgres_url)
        tools.release.set()

    assert len(accepted) >= RESPONSES // 2, len(accepted)
    store = await open_store(postgres_url, migrate=False)
    problems: list[str] = []
    logs: dict[str, list[dict[str, Any]]] = {}
    tool_attempts: dict[str, int] = {}
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    reruns = 0
    try:
        for response_id in stored_ids:
            record = await store.get_response(response_id)
            assert record is not None
            statuses[record.status] += 1
            if record.status == "failed":
                error = (record.result or {}).get("error") or {}
                failures[str(error.get("message"))] += 1
            rows = await store.read_events(response_id, after=-1, limit=100_000)
            logs[response_id] = [orjson.loads(row.data) for row in rows]
            problems += _log_problems(response_id, record.status, logs[response_id])
            steps = await store.load_steps(response_id)
            left = [step for step in steps if step.state.value in ("pending", "processing")]
            if left:
                problems.append(
                    f"{response_id} ({record.status}, error {(record.result or {}).get('error')})"
                    " left steps running: "
                    + "; ".join(_step_line(step) for step in steps)
                    + " | events: "
                    + " ".join(e["type"].removeprefix("response.") for e in logs[response_id])
                )
            for step in steps:
                reruns += step.attempt > 1
                if step.kind.value == "tool_call":
                    tool_attempts[step.id] = step.attempt
    finally:
        await store.close()

    # every stream a client followed is contiguous, ends once, and is the stored log
    for client in accepted:
        assert client.response_id in logs, client.response_id
        if client.events != logs[client.response_id]:
            problems.append(f"{client.response_id}: what client {client.index} read differs")
    # no tool step ran more often than its recorded attempts, and every call has its step
    for key, count in tools.calls.items():
        if key not in tool_attempts:
            problems.append(f"a tool was called with key {key}, which no stored step has")
        elif count > tool_attempts[key]:
            problems.append(f"tool step {key} ran {count} times in {tool_attempts[key]} attempts")
    # a tool whose result a client saw never ran again
    for client in accepted:
        for item_id, output in client.tool_results.items():
            seen = orjson.loads(output) if output.startswith("{") else None
            if seen is not None and tools.calls[seen["key"]] != seen["call"]:
                problems.append(
                    f"{client.response_id}: tool step {seen['key']} ran again after a client "
                    f"saw its result (item {item_id}, call {seen['call']} of "
                    f"{tools.calls[seen['key']]})"
                )
    # a response fails only of a fault the upstream was told to make, never of the others
    unexplained = set(failures) - set(UPSTREAM_FAILURES)
    if unexplained:
        problems.append(f"responses failed with {sorted(unexplained)} ({dict(failures)})")
    assert not problems, "\n".join(problems[:30])
    # the faults did happen: refused and cut model calls, stalled tools, steps run again
    # by the process that took the killed one's responses over
    assert set(failures) == set(UPSTREAM_FAILURES), failures
    assert tools.by_tool["stall"] > 0
    assert reruns > 0
    assert statuses["completed"] > RESPONSES // 2, statuses
    assert time.monotonic() - started < BUDGET_SECONDS
