"""kill -9 at points chosen from outside; the stream a client resumes is the one it should see.

One response shape for every kill point: a model call streams a short text
and then fans out to four HTTP tools of different durations, and a second
model call streams the final text. A streaming client reads the response and
the test SIGKILLs the stepline process once the client has seen a chosen
event, or a chosen time after one: mid model stream, at offsets into the
fan-out, right as each tool's ``output_item.done`` arrives, mid final text,
right after ``response.completed``. A new process on the same database
claims the expired lease and finishes the response; the client resumes with
``starting_after`` the last sequence number it saw.

Checked for every kill point, on SQLite and PostgreSQL: what the client saw
before the kill plus what it got after is one whole stream (numbered 0..N,
one terminal event, no event twice, every item added once and done once,
output_index 0.. without gaps, each item's events in the order a client
expects); a tool whose result the client was shown is never called again,
one that was not may run again under the same Idempotency-Key only; the
final response is the terminal event's and shows the tool outputs the
client was shown; a model call whose end the client saw is not called again.

Speed: every stepline process here is ``stepline serve`` run by the real CLI
in a fresh OS process, forked from a launcher that imported stepline once.
Starting one then takes about a second instead of several (imports
dominate), which keeps 20 kills within the time budget. Each backend keeps
one database and one process at a time for the module (so a short lease is
safe: no live process can lose it to another); a response never outlives
its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests._backends import SQL_KINDS, backend_params, database_url
from tests.durability.conftest import (
    DONE,
    TERMINAL_EVENTS,
    free_port,
    output_text,
    replay,
    seqs_of,
    sse_events,
    stepline_config,
    text_deltas,
    to_toml,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: one process runs at a time, so no live process can lose its lease to another;
#: short, so the process started after a kill claims the response at its start
LEASE_SECONDS = 0.5

#: seconds each tool of the fan-out takes: each one's result arrives at its own moment
DURATIONS = {"t_a": 0.05, "t_b": 0.2, "t_c": 0.35, "t_d": 0.5}
TOOLS = list(DURATIONS)

OPENING = " ".join(f"look{i}" for i in range(8))
CLOSING = " ".join(f"found{i}" for i in range(12))
TOKEN_DELAY = 0.02
#: output_index of the opening message, the tool calls and the closing message
OPENING_INDEX, CLOSING_INDEX = 0, len(TOOLS) + 1

SCRIPT = {
    "turns": [
        {
            "content": OPENING,
            "token_delay": TOKEN_DELAY,
            "tool_calls": [{"name": name, "arguments": {"x": name}} for name in TOOLS],
        },
        {"content": CLOSING, "token_delay": TOKEN_DELAY},
    ]
}


# -- the tools --------------------------------------------------------------------


@dataclass
class TimedTools:
    """HTTP tools that take ``DURATIONS[name]`` and answer with their attempt number.

    Hits are counted per Idempotency-Key (a tool step's id), so a result a
    client was shown and a second run of the same step tell apart.
    """

    hits: Counter[str] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            key = request.headers.get("idempotency-key", "")
            self.hits[key] += 1
            self.names[key] = name
            attempt = self.hits[key]
            await asyncio.sleep(DURATIONS[name])  # the tool's work, simulated
            return Response(orjson.dumps({"tool": name, "attempt": attempt}))

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])

    def forget(self) -> None:
        self.hits.clear()
        self.names.clear()

    def keys_of(self, name: str) -> list[str]:
        return [key for key, tool in self.names.items() if tool == name]


def _config(upstream_url: str, tools_url: str) -> dict[str, Any]:
    config = stepline_config(upstream_url, tools_url, limits={"lease_seconds": LEASE_SECONDS})
    config["tools"] = {
        name: {
            "type": "http",
            "description": f"The {name} tool.",
            "url": f"{tools_url}/tools/{name}",
            "parameters": {
                "type": "object",
                "properties": {"x": {"type": "string"}},
                "required": ["x"],
            },
            "timeout": 30,
        }
        for name in TOOLS
    }
    config["default_model"]["tools"] = TOOLS
    return config


# -- stepline processes, forked from a launcher -----------------------------------

#: Imports stepline once, then forks a child per ``spawn`` command that runs the
#: ``stepline`` CLI (as ``python -m stepline`` does) with its output in a log file;
#: ``reap`` waits for a child, ``poll`` asks whether it exited. A child dies with
#: the launcher, and the launcher ends when the test process closes its stdin.
_LAUNCHER = r"""
import ctypes, json, os, signal, sys, traceback
import stepline._cli
import stepline._server.app, stepline._server.serve, stepline._server.preflight  # noqa: F401
import alembic.command, asyncpg, aiosqlite, h11, uvicorn.protocols.http.h11_impl  # noqa: F401
reply = sys.stdout.fileno()
for line in sys.stdin:
    command = json.loads(line)
    if command["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            if sys.platform == "linux":
                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = 1
            try:
                sys.argv = ["stepline", *command["argv"]]
                stepline._cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.write(reply, b"%d\n" % pid)
    else:
        flags = os.WNOHANG if command["op"] == "poll" else 0
        pid, status = os.waitpid(command["pid"], flags)
        os.write(reply, b"%d\n" % (os.waitstatus_to_exitcode(status) if pid else 999))
"""


class Launcher:
    """The forking launcher; calls are short request/reply exchanges over its pipes."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _ask(self, **command: Any) -> int:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(orjson.dumps(command) + b"\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline()
        assert answer, f"the launcher died (exit {self._proc.poll()})"
        return int(answer)

    def spawn(self, argv: list[str], log: Path) -> int:
        return self._ask(op="spawn", argv=argv, log=str(log))

    def reap(self, pid: int) -> int:
        """Wait for child ``pid`` to exit; its exit code (negative: the signal)."""
        return self._ask(op="reap", pid=pid)

    def exited(self, pid: int) -> int | None:
        code = self._ask(op="poll", pid=pid)
        return None if code == 999 else code

    def close(self) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        self._proc.wait(10)
        self._proc.stdout.close()


class Stepline:
    """``stepline serve`` on one port, config and database; killed and started again."""

    def __init__(self, launcher: Launcher, *, config: Path, url: str, log_dir: Path) -> None:
        self._launcher = launcher
        port = free_port()
        self._argv = ["serve", "--config", str(config), "--host", "127.0.0.1"]
        self._argv += ["--port", str(port), "--database", url]
        self.url = f"http://127.0.0.1:{port}"
        self._log_dir = log_dir
        self.pid: int | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"stepline-{self.starts}.log"

    async def start(self, within: float = 20.0) -> None:
        """A new process; returns once it answers HTTP (or fails with its log)."""
        assert self.pid is None, "the previous process still runs"
        self.starts += 1
        # the first spawn waits for the launcher's imports: not on the event loop
        self.pid = await asyncio.to_thread(self._launcher.spawn, self._argv, self.log_path)
        async with asyncio.timeout(within), httpx.AsyncClient(timeout=2.0) as client:
            while True:
                code = self._launcher.exited(self.pid)
                if code is not None:
                    self.pid = None
                    log = self.log_path.read_text(errors="replace")
                    raise RuntimeError(f"stepline exited with {code} before it listened:\n{log}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}/v1/models")).status_code == 200:
                        return
                await asyncio.sleep(0.02)  # polling a port until a process listens

    def kill9(self) -> None:
        assert self.pid is not None, "no process runs"
        os.kill(self.pid, signal.SIGKILL)
        assert self._launcher.reap(self.pid) == -signal.SIGKILL
        self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)  # it may have exited already: then a zombie
            self._launcher.reap(self.pid)
            self.pid = None


def _client(server: Stepline) -> httpx.AsyncClient:
    """A fresh connection per request: a killed process leaves none to reuse."""
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=30.0,
        limits=httpx.Limits(max_keepalive_connections=0, max_connections=100),
    )


# -- fixtures -------------------------------------------------------------------------


@dataclass
class Rig:
    """The scripted upstream, the tools and the launcher, for the whole module."""

    model: ScriptedModel
    tools: TimedTools
    launcher: Launcher
    upstream_url: str
    tools_url: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig() -> AsyncIterator[Rig]:
    tools = TimedTools()
    model = ScriptedModel(demo_token_delay=0)
    launcher = Launcher()
    async with contextlib.AsyncExitStack() as exits:
        exits.callback(launcher.close)
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        upstream_url = await exits.enter_async_context(
            serve_app(create_scripted_app(model), shutdown_timeout=1)
        )
        yield Rig(
            model=model,
            tools=tools,
            launcher=launcher,
            upstream_url=upstream_url,
            tools_url=tools_url,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=backend_params(SQL_KINDS))
async def stepline(
    request: pytest.FixtureRequest, rig: Rig, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stepline]:
    """A running stepline on a database of the backend, kept for the module."""
    tmp_path = tmp_path_factory.mktemp(f"kill-points-{request.param}")
    config = tmp_path / "stepline.toml"
    config.write_text(to_toml(_config(rig.upstream_url, rig.tools_url)))
    async with database_url(request.param, tmp_path) as url:
        server = Stepline(rig.launcher, config=config, url=url, log_dir=tmp_path)
        try:
            await server.start(within=60)
            yield server
        finally:
            server.stop()


# -- kill points ----------------------------------------------------------------------


Events = list[dict[str, Any]]


@dataclass(frozen=True)
class KillPoint:
    """Kill ``delay`` seconds after the client has seen events for which ``armed`` holds."""

    armed: Callable[[Events], bool]
    delay: float = 0.0


def _counted(type_: str, output_index: int, count: int) -> Callable[[Events], bool]:
    """Armed once ``count`` events of ``type_`` for item ``output_index`` have come."""

    def armed(events: Events) -> bool:
        found = [e for e in events if e["type"] == type_ and e["output_index"] == output_index]
        return len(found) >= count

    return armed


def _seen(type_: str) -> Callable[[Events], bool]:
    return lambda events: any(event["type"] == type_ for event in events)


def _tool_done(name: str) -> Callable[[Events], bool]:
    return lambda events: name in _tool_outputs(events)


TEXT_DELTA = "response.output_text.delta"
ARGUMENTS_DELTA = "response.mcp_call_arguments.delta"
FAN_OUT_START = "response.mcp_call.in_progress"

KILL_POINTS = {
    "model-stream-after-3-deltas": KillPoint(_counted(TEXT_DELTA, OPENING_INDEX, 3)),
    # the model streams its tool calls: t_a's is whole, t_b's has begun
    "model-stream-mid-tool-calls": KillPoint(_counted(ARGUMENTS_DELTA, OPENING_INDEX + 2, 1)),
    "fan-out-start": KillPoint(_seen(FAN_OUT_START)),
    # between t_b's and t_c's results
    "fan-out-plus-0.27s": KillPoint(_seen(FAN_OUT_START), delay=0.27),
    **{f"tool-done-{name}": KillPoint(_tool_done(name)) for name in TOOLS},
    "final-text-after-4-deltas": KillPoint(_counted(TEXT_DELTA, CLOSING_INDEX, 4)),
    "after-completed": KillPoint(_seen("response.completed")),
}


async def _stream_until_killed(server: Stepline, model: str, point: KillPoint) -> Events:
    """POST a streaming response and SIGKILL ``server`` at ``point``; what the client saw."""
    seen: Events = []
    killer: asyncio.Task[None] | None = None

    async def kill_later() -> None:
        await asyncio.sleep(point.delay)  # the kill point itself: a chosen time after an event
        server.kill9()

    async with _client(server) as client:
        # the kill cuts the stream: the client keeps what it had read
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream(
                "POST", "/v1/responses", json={"model": model, "input": "go", "stream": True}
            ) as reply:
                assert reply.status_code == 200
                async for item in sse_events(reply):
                    assert item != DONE, "the response ended before its kill point"
                    assert isinstance(item, dict)
                    seen.append(item)
                    if killer is None and point.armed(seen):
                        if point.delay == 0:
                            server.kill9()
                            break
                        killer = asyncio.create_task(kill_later())
    assert killer is not None or server.pid is None, "the stream ended before the kill point"
    if killer is not None:
        await killer
    return seen


# -- what a client must see -----------------------------------------------------------


def _identity(event: dict[str, Any]) -> tuple[Any, ...]:
    """What makes an event itself, apart from its number: an event sent twice repeats it."""
    return (
        event["type"],
        event.get("item_id", event.get("item", {}).get("id")),
        event.get("output_index"),
        event.get("content_index"),
        event.get("delta"),
    )


def _tool_outputs(events: Events) -> dict[str, Any]:
    """Per tool name, the output a client was shown in its ``output_item.done``."""
    return {
        event["item"]["name"]: orjson.loads(event["item"]["output"])
        for event in events
        if event["type"] == "response.output_item.done" and event["item"]["type"] == "mcp_call"
    }


def _item_events(events: Events, index: int) -> list[str]:
    return [
        event["type"].removeprefix("response.")
        for event in events
        if event.get("output_index") == index
    ]


def _message_events(words: int) -> list[str]:
    return [
        "output_item.added",
        "content_part.added",
        *["output_text.delta"] * words,
        "output_text.done",
        "content_part.done",
        "output_item.done",
    ]


def _assert_one_whole_stream(events: Events, final: dict[str, Any]) -> None:
    """One stream of the scripted response, as a client that never lost it sees it."""
    assert seqs_of(events) == list(range(len(events)))
    identities = Counter(_identity(event) for event in events)
    assert [key for key, count in identities.items() if count > 1] == []
    assert [event["type"] for event in events if event["type"] in TERMINAL_EVENTS] == [
        "response.completed"
    ]
    assert [event["type"] for event in events if "output_index" not in event] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert events[-1]["response"] == final
    added = [
        (event["output_index"], event["item"]["id"])
        for event in events
        if event["type"] == "response.output_item.added"
    ]
    done = [
        (event["output_index"], event["item"]["id"])
        for event in events
        if event["type"] == "response.output_item.done"
    ]
    assert [index for index, _ in added] == list(range(len(added)))
    assert sorted(done) == added
    assert added == [(index, item["id"]) for index, item in enumerate(final["output"])]
    # each item as it was shown when done is what the final response keeps
    shown = {
        event["output_index"]: event["item"]
        for event in events
        if event["type"] == "response.output_item.done"
    }
    assert [shown[index] for index in range(len(added))] == final["output"]
    assert _item_events(events, OPENING_INDEX) == _message_events(len(OPENING.split()))
    assert _item_events(events, CLOSING_INDEX) == _message_events(len(CLOSING.split()))
    for index in range(OPENING_INDEX + 1, CLOSING_INDEX):
        assert _item_events(events, index) == [
            "output_item.added",
            *["mcp_call_arguments.delta"] * 4,  # the scripted model streams 4 pieces
            "mcp_call_arguments.done",
            "mcp_call.in_progress",
            "mcp_call.completed",
            "output_item.done",
        ], f"item {index}"


#: per model turn, what a client sees only once that call's end is stored: the
#: tool steps it asked for start, or its last item (the closing message) is done
_CALL_ENDED: dict[int, Callable[[Events], bool]] = {
    0: _seen(FAN_OUT_START),
    1: lambda events: any(
        event["type"] == "response.output_item.done" and event["output_index"] == CLOSING_INDEX
        for event in events
    ),
}


def _model_call_runs(before: Events, turn: int, at_kill: int) -> set[int]:
    """How often the model call of ``turn`` may have been made in all, given what the
    client saw and how often the upstream had been asked for it at the kill."""
    if _CALL_ENDED[turn](before) or at_kill == 0:
        return {1}  # its end was stored before the client saw that, or it had not begun
    return {1, 2}  # cut mid call, or ended but not yet shown when the kill came


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", list(KILL_POINTS.values()), ids=list(KILL_POINTS))
async def test_kill9_at_a_kill_point(
    stepline: Stepline, rig: Rig, point: KillPoint, request: pytest.FixtureRequest
) -> None:
    model = f"kp-{request.node.callspec.id}"
    rig.model.register(model, Script.from_dict(SCRIPT))
    rig.tools.forget()

    before = await _stream_until_killed(stepline, model, point)
    response_id = before[0]["response"]["id"]
    last_seen = before[-1]["sequence_number"]
    told = _tool_outputs(before)
    at_kill = {turn: rig.model.attempts(model, turn) for turn in (0, 1)}

    await stepline.start()
    async with _client(stepline) as client:
        if any(event["type"] in TERMINAL_EVENTS for event in before):
            # a client that saw the end finds it on the new process at once
            now = await client.get(f"/v1/responses/{response_id}")
            assert now.json()["status"] == "completed", now.text
        resumed = await replay(client, response_id, starting_after=last_seen)
        final = (await client.get(f"/v1/responses/{response_id}")).json()
        whole = await replay(client, response_id)
    after = resumed.events

    assert (resumed.done, resumed.done_last) == (1, True)
    assert seqs_of(before) == list(range(last_seen + 1))
    assert before + after == whole.events
    _assert_one_whole_stream(before + after, final)
    assert final["status"] == "completed", final
    assert output_text(final) == OPENING + CLOSING
    assert text_deltas(before + after) == OPENING + CLOSING

    # a result the client was shown stands: that tool step never ran again
    outputs = {item["name"]: orjson.loads(item["output"]) for item in final["output"][1:-1]}
    assert {name: outputs[name] for name in told} == told
    assert all(output["attempt"] == 1 for output in told.values())
    for name in TOOLS:
        keys = rig.tools.keys_of(name)
        assert len(keys) == 1, f"{name} ran under keys {keys}"
        hits = rig.tools.hits[keys[0]]
        assert hits == (1 if name in told else outputs[name]["attempt"])
        assert hits <= 2
    # a model call whose end the client saw is not made again
    runs = {turn: rig.model.attempts(model, turn) for turn in (0, 1)}
    for turn in (0, 1):
        assert runs[turn] in _model_call_runs(before, turn, at_kill[turn]), (at_kill, runs)
