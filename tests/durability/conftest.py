"""Process-level durability fixtures: stepline as its own process, killed and restarted.

``harness`` serves the scripted model and the HTTP tools inside the test
process (so a test registers scripts and reads what the upstream and the
tools received directly) and starts stepline as a separate process with
``python -m stepline serve`` on a TOML config and a SQLite file in the test's
temporary directory. :class:`ServerProcess` can ``kill9`` it, ``terminate``
it (SIGTERM) and start it again on the same port, config and database, so a
new process takes the responses over through their expired leases.

The tool server counts calls per tool and records each call's
``Idempotency-Key`` (the step id). The ``block`` tool answers only once
``ToolServer.release`` is set, so a test can kill stepline while it is in
flight; ``slow`` simulates a slow tool.

The helpers at the bottom read SSE bodies whole or event by event, and read
the database directly (read-only) to check that each stored chain and event
log is consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests._backends import database_url as fresh_database

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
_LIVE = frozenset({"pending", "processing"})
#: the ``lease_seconds`` of every test server: a killed process is taken over fast
LEASE_SECONDS = 1.5

# -- the HTTP tools -----------------------------------------------------------


@dataclass
class ToolServer:
    """HTTP tools that count calls and record each call's idempotency key, in order."""

    calls: Counter[str] = field(default_factory=Counter)
    keys: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_seconds: float = 0.2
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            body = orjson.loads(await request.body() or b"{}")
            self.calls[name] += 1
            self.keys[name].append(request.headers.get("idempotency-key", ""))
            self._changed.set()
            self._changed = asyncio.Event()
            if name == "block":
                await self.release.wait()
            elif name == "slow":
                await asyncio.sleep(self.slow_seconds)  # a slow tool, simulated
            return Response(f"{name} result for {orjson.dumps(body).decode()}")

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])

    async def wait_calls(self, name: str, count: int, within: float = 20.0) -> None:
        """Until ``name`` has been called ``count`` times (the call may still be running)."""
        async with asyncio.timeout(within):
            while self.calls[name] < count:
                await self._changed.wait()


# -- the config ---------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(config: dict[str, Any]) -> str:
    """Top-level keys first, then one ``[table]`` per dict with inline values."""
    lines = [f"{key} = {_toml_value(v)}" for key, v in config.items() if not isinstance(v, dict)]
    for key, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{key}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _http_tool(tools_url: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    return {
        "type": "http",
        "description": f"The {name} tool.",
        "url": f"{tools_url}/tools/{name}",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "string"}},
            "required": ["x"],
        },
        "timeout": timeout,
    }


def stepline_config(
    upstream_url: str,
    tools_url: str,
    *,
    upstream: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every model name goes to the scripted upstream and gets every server tool."""
    upstream_options: dict[str, Any] = {
        "base_url": f"{upstream_url}/v1",
        "max_retries": 0,
        "timeouts": {"connect": 2, "first_byte": 10, "chunk": 10, "total": 60},
        **(upstream or {}),
    }
    return {
        "upstreams": {"scripted": upstream_options},
        "default_model": {
            "upstream": "scripted",
            "tools": ["quick", "slow", "block", "researcher", "helper"],
        },
        "tools": {
            "quick": _http_tool(tools_url, "quick"),
            "slow": _http_tool(tools_url, "slow"),
            "block": _http_tool(tools_url, "block"),
            "researcher": {
                "type": "agent",
                "description": "A research sub-agent that may block.",
                "model": "researcher",
                "instructions": "You research things.",
                "tools": ["block"],
            },
            "helper": {
                "type": "agent",
                "description": "A quick helper sub-agent.",
                "model": "helper",
                "instructions": "You help.",
                "tools": ["quick"],
            },
        },
        "limits": {"lease_seconds": LEASE_SECONDS, **(limits or {})},
    }


# -- the server process -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``python -m stepline serve`` as a child process; restartable on the same port."""

    def __init__(
        self,
        *,
        config: Path,
        database: Path,
        port: int,
        log_dir: Path,
        database_url: str | None = None,
    ) -> None:
        self.config = config
        self.database = database
        #: the database the process uses; the SQLite file ``database`` by default
        self.database_url = database_url or f"sqlite:///{database}"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"stepline-{self.port}-{self.starts}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, within: float = 20.0) -> None:
        """Spawn the process and wait until it answers HTTP."""
        self.spawn()
        await self.wait_ready(within)

    def spawn(self) -> None:
        assert not self.running, "the previous process is still running"
        self.starts += 1
        command = [
            sys.executable,
            "-m",
            "stepline",
            "serve",
            "--config",
            str(self.config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            self.database_url,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    async def wait_ready(self, within: float) -> None:
        """Poll the port until the process answers (or fail with its log)."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(
                        f"stepline exited with {code} before it listened:\n{self.log_tail()}"
                    )
                try:
                    reply = await client.get(f"{self.url}/v1/models")
                    if reply.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"stepline did not listen in {within}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)  # waiting for a process to listen

    def kill9(self) -> None:
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): alive, holding its leases, renewing none."""
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        """The exit code; raises ``subprocess.TimeoutExpired`` after ``within`` seconds."""
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, within)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- the harness --------------------------------------------------------------


@dataclass
class Harness:
    model: ScriptedModel
    tools: ToolServer
    upstream_url: str
    tools_url: str
    tmp_path: Path
    servers: list[ServerProcess] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.tmp_path / "stepline.db"

    def script(self, name: str, turns: list[dict[str, Any]], **options: Any) -> str:
        self.model.register(name, Script.from_dict({"turns": turns, **options}))
        return name

    async def server(
        self,
        *,
        upstream: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        start: bool = True,
        database_url: str | None = None,
    ) -> ServerProcess:
        """A stepline process on this harness's database (started unless told not to)."""
        config = self.tmp_path / f"stepline-{len(self.servers)}.toml"
        config.write_text(
            to_toml(
                stepline_config(self.upstream_url, self.tools_url, upstream=upstream, limits=limits)
            )
        )
        server = ServerProcess(
            config=config,
            database=self.database,
            port=free_port(),
            log_dir=self.tmp_path,
            database_url=database_url,
        )
        self.servers.append(server)
        if start:
            await server.start()
        return server


@pytest.fixture
async def postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh PostgreSQL database, migrated the way an operator does before starting
    several processes on it (``stepline migrate``)."""
    async with fresh_database("postgres", tmp_path) as url:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "stepline", "migrate", "--database", url],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield url


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as exits:
        tools = ToolServer()
        model = ScriptedModel(demo_token_delay=0)
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        exits.callback(tools.release.set)
        upstream_url = await exits.enter_async_context(
            serve_app(create_scripted_app(model), shutdown_timeout=1)
        )
        built = Harness(
            model=model,
            tools=tools,
            upstream_url=upstream_url,
            tools_url=tools_url,
            tmp_path=tmp_path,
        )
        try:
            yield built
        finally:
            for server in built.servers:
                server.stop()


def client_for(server: ServerProcess, timeout: float = 30.0) -> httpx.AsyncClient:
    """A client that opens a fresh connection per request (a killed server leaves none)."""
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=timeout,
        limits=httpx.Limits(max_keepalive_connections=0, max_connections=100),
    )


# -- SSE ----------------------------------------------------------------------

DONE = "[DONE]"


async def sse_events(response: httpx.Response) -> AsyncGenerator[dict[str, Any] | str, None]:
    """Events of an SSE body as they arrive, and ``DONE`` for ``data: [DONE]``.

    Checks the framing of each block: ``event:`` then one ``data:`` line whose
    JSON ``type`` equals the event name.
    """
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = block.split("\n")
            if lines == ["data: [DONE]"]:
                yield DONE
                continue
            assert len(lines) == 2, block
            assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
            event: dict[str, Any] = orjson.loads(lines[1][len("data: ") :])
            assert event["type"] == lines[0][len("event: ") :], block
            yield event
    assert buffer == "", f"the stream ended inside a block: {buffer!r}"


@dataclass
class StreamRead:
    events: list[dict[str, Any]]
    done: int  # how many ``data: [DONE]`` markers came
    done_last: bool  # nothing came after the (first) marker


async def read_stream(response: httpx.Response) -> StreamRead:
    """The whole SSE body."""
    assert response.status_code == 200, await response.aread()
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    done = 0
    after_done = False
    async for item in sse_events(response):
        if item == DONE:
            done += 1
        else:
            assert isinstance(item, dict)
            after_done = after_done or done > 0
            events.append(item)
    return StreamRead(events=events, done=done, done_last=done >= 1 and not after_done)


async def replay(client: httpx.AsyncClient, response_id: str, **params: Any) -> StreamRead:
    """``GET /v1/responses/{id}?stream=true`` (plus ``params``) read to its end."""
    query = {"stream": "true", **{key: str(value) for key, value in params.items()}}
    async with client.stream("GET", f"/v1/responses/{response_id}", params=query) as reply:
        return await read_stream(reply)


async def read_until(
    response: httpx.Response, stop: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Events of a live stream until ``stop(events_so_far)``; the caller then drops it."""
    assert response.status_code == 200
    events: list[dict[str, Any]] = []
    async with contextlib.aclosing(sse_events(response)) as items:
        async for item in items:
            assert item != DONE, f"the stream ended before the test dropped it: {events}"
            assert isinstance(item, dict)
            events.append(item)
            if stop(events):
                break
    return events


def deltas_seen(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    """A ``read_until`` condition: ``count`` text deltas have arrived."""

    def enough(events: list[dict[str, Any]]) -> bool:
        return types_of(events).count("response.output_text.delta") >= count

    return enough


def without_extensions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events the Responses API defines (``stepline:`` extensions left out)."""
    return [event for event in events if not event["type"].startswith("stepline:")]


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def seqs_of(events: list[dict[str, Any]]) -> list[int]:
    return [event["sequence_number"] for event in events]


def text_deltas(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["delta"] for event in events if event["type"] == "response.output_text.delta"
    )


def message_events(words: int) -> list[str]:
    """The event types of a response whose only output is one streamed message."""
    return [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * words,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


async def wait_terminal(
    client: httpx.AsyncClient, response_id: str, within: float = 30.0
) -> dict[str, Any]:
    """Poll ``GET /v1/responses/{id}`` until the response is terminal (no other signal)."""
    async with asyncio.timeout(within):
        while True:
            reply = await client.get(f"/v1/responses/{response_id}")
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            if body["status"] in TERMINAL_STATUSES:
                return body
            await asyncio.sleep(0.1)


# -- the database, read directly ------------------------------------------------


def read_only(database: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    connection.row_factory = sqlite3.Row
    return connection


@dataclass(frozen=True)
class StoredStep:
    id: str
    scope: str | None
    previous_step_id: str | None
    sequence: int
    kind: str
    state: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    error: dict[str, Any] | None
    call_id: str | None
    attempt: int


def _json(text: str | bytes | None) -> Any:
    return None if text is None else orjson.loads(text)


def stored_steps(database: Path, response_id: str) -> list[StoredStep]:
    with closing(read_only(database)) as connection:
        rows = connection.execute(
            "SELECT id, scope, previous_step_id, sequence, kind, state, request, response,"
            " error, call_id, attempt FROM steps WHERE response_id = ? ORDER BY sequence",
            (response_id,),
        ).fetchall()
    return [
        StoredStep(
            id=row["id"],
            scope=row["scope"],
            previous_step_id=row["previous_step_id"],
            sequence=row["sequence"],
            kind=row["kind"],
            state=row["state"],
            request=_json(row["request"]),
            response=_json(row["response"]),
            error=_json(row["error"]),
            call_id=row["call_id"],
            attempt=row["attempt"],
        )
        for row in rows
    ]


def stored_events(database: Path, response_id: str) -> list[tuple[int, dict[str, Any]]]:
    with closing(read_only(database)) as connection:
        rows = connection.execute(
            "SELECT seq, data FROM events WHERE response_id = ? ORDER BY seq", (response_id,)
        ).fetchall()
    return [(row["seq"], orjson.loads(row["data"])) for row in rows]


def stored_response(database: Path, response_id: str) -> tuple[str, dict[str, Any] | None]:
    """(status, result) of a stored response."""
    with closing(read_only(database)) as connection:
        row = connection.execute(
            "SELECT status, result FROM responses WHERE id = ?", (response_id,)
        ).fetchone()
    assert row is not None, f"no response {response_id} in the database"
    return row["status"], _json(row["result"])


def stored_response_ids(database: Path) -> dict[str, str]:
    """Every stored response id with its model."""
    with closing(read_only(database)) as connection:
        rows = connection.execute("SELECT id, model FROM responses").fetchall()
    return {row["id"]: row["model"] for row in rows}


def _tool_calls(step: StoredStep) -> list[dict[str, Any]]:
    if step.response is None:
        return []
    calls: list[dict[str, Any]] = step.response["message"].get("tool_calls") or []
    return calls


def chain_problems(database: Path, response_id: str) -> list[str]:
    """What is inconsistent in one stored response: its status, steps and event log.

    For a terminal response: no step left ``pending``/``processing``; step
    sequences 1..n; every step's scope and predecessor exist, in its scope and
    before it; every tool step answers a call of the model call before it in
    its scope, once; for a completed response every call has its step. The
    event log: seqs 0..m equal to each event's ``sequence_number``, starting
    with ``response.created``, and — unless cancelled — exactly one terminal
    event, last, whose response is the stored result.
    """
    status, result = stored_response(database, response_id)
    steps = stored_steps(database, response_id)
    events = stored_events(database, response_id)
    problems: list[str] = []
    if status not in TERMINAL_STATUSES:
        problems.append(f"status {status!r} is not terminal")
    live = [f"#{s.sequence} {s.kind} {s.state}" for s in steps if s.state in _LIVE]
    if live and status in TERMINAL_STATUSES:
        problems.append(f"{status} response with live steps: {live}")
    sequences = [step.sequence for step in steps]
    if sequences != list(range(1, len(steps) + 1)):
        problems.append(f"step sequences are {sequences}, not 1..{len(steps)}")
    by_id = {step.id: step for step in steps}
    for step in steps:
        scope_step = by_id.get(step.scope) if step.scope is not None else None
        if step.scope is not None and (scope_step is None or scope_step.kind != "tool_call"):
            problems.append(f"step #{step.sequence} has scope {step.scope} that is no tool step")
        if step.previous_step_id is not None:
            previous = by_id.get(step.previous_step_id)
            if (
                previous is None
                or previous.scope != step.scope
                or previous.sequence >= step.sequence
            ):
                problems.append(f"step #{step.sequence} has a bad previous_step_id")
    scopes: dict[str | None, list[StoredStep]] = defaultdict(list)
    for step in steps:
        scopes[step.scope].append(step)
    for scope, chain in scopes.items():
        batches: list[tuple[StoredStep, list[StoredStep]]] = []
        for step in chain:
            if step.kind == "model_call":
                batches.append((step, []))
            elif not batches:
                problems.append(f"tool step #{step.sequence} (scope {scope}) before any model call")
            else:
                batches[-1][1].append(step)
        for model_call, tool_steps in batches:
            called = [call["id"] for call in _tool_calls(model_call)]
            answered = [step.call_id for step in tool_steps]
            if len(set(answered)) != len(answered) or not set(answered) <= set(called):
                problems.append(
                    f"model call #{model_call.sequence} made calls {called}, "
                    f"tool steps answer {answered}"
                )
            elif status == "completed" and Counter(answered) != Counter(called):
                problems.append(
                    f"completed, but calls {called} of model call #{model_call.sequence} "
                    f"have steps {answered}"
                )
    seqs = [seq for seq, _ in events]
    if seqs != list(range(len(events))):
        problems.append(f"event seqs are {_ranges(seqs)}, not 0..{len(events) - 1}")
    numbered = [event["sequence_number"] for _, event in events]
    if numbered != seqs:
        problems.append("an event's sequence_number differs from its seq")
    kinds = [event["type"] for _, event in events]
    if kinds and kinds[0] != "response.created":
        problems.append(f"the event log starts with {kinds[0]}")
    terminal = [(seq, event) for seq, event in events if event["type"] in TERMINAL_EVENTS]
    if status != "cancelled":
        if len(terminal) != 1 or kinds[-1] not in TERMINAL_EVENTS:
            problems.append(
                f"{status}: terminal events at {[seq for seq, _ in terminal]} "
                f"of 0..{len(events) - 1} (last is {kinds[-1] if kinds else None})"
            )
        elif terminal[0][1]["response"] != result:
            problems.append("the terminal event's response differs from the stored result")
        elif result is not None and result["status"] != status:
            problems.append(f"the stored result says {result['status']}, the row {status}")
    return problems


def describe(database: Path, response_id: str) -> str:
    """A compact account of a stored response, for failure messages."""
    status, _ = stored_response(database, response_id)
    steps = ", ".join(
        f"#{s.sequence} {s.kind}{'(' + s.request['name'] + ')' if 'name' in s.request else ''}"
        f"{' in ' + s.scope[-6:] if s.scope else ''} {s.state} x{s.attempt}"
        for s in stored_steps(database, response_id)
    )
    kinds = [
        event["type"].removeprefix("response.") for _, event in stored_events(database, response_id)
    ]
    return f"{response_id} {status}: steps [{steps}]; events {kinds}"


def _ranges(values: list[int]) -> str:
    """``0..12, 14..40`` style summary of a list of ints."""
    if not values:
        return "[]"
    parts: list[str] = []
    start = previous = values[0]
    for value in values[1:]:
        if value != previous + 1:
            parts.append(f"{start}..{previous}")
            start = value
        previous = value
    parts.append(f"{start}..{previous}")
    return ", ".join(parts)
