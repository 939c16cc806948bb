"""Traces, end to end: a stepline process exporting OTLP/HTTP to a receiver in the test.

The receiver (``tests/_otlp.py``) decodes each ``ExportTraceServiceRequest``;
the scripted upstream and the HTTP tools record the ``traceparent`` of every
request they get. Each test runs a real ``stepline serve`` process and checks
that the exported span tree is the stored chain: one span per step with its
step id, under the response's span, a sub-agent's steps under the tool call
that ran it, each with its stored times, usage and finish reason; and that the
client's ``traceparent`` continues into the upstream's and the tools' requests.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator
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
from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.asyncio.client import connect

from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests._otlp import ReceivedSpan, Receiver
from tests.durability.conftest import ServerProcess, free_port, to_toml

pytestmark = pytest.mark.timeout(90)

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
#: the span kinds of the OTLP encoding
INTERNAL, CLIENT = 1, 3
STATUS_ERROR = 2


# -- what the upstream and the tools were sent ------------------------------------


@dataclass
class UpstreamHeaders:
    """An ASGI wrapper keeping each model call's ``traceparent`` by its step id."""

    app: ASGIApp
    traceparents: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {name.decode(): value.decode() for name, value in scope["headers"]}
            step_id = headers.get("x-stepline-step-id")
            if step_id is not None:
                self.traceparents[step_id].append(headers.get("traceparent", ""))
        await self.app(scope, receive, send)


@dataclass
class ToolServer:
    """HTTP tools keeping each call's ``traceparent`` by its idempotency key (the step id);
    ``block`` answers once ``release`` is set."""

    traceparents: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            body = orjson.loads(await request.body() or b"{}")
            key = request.headers.get("idempotency-key", "")
            self.traceparents[key].append(request.headers.get("traceparent", ""))
            self.calls[name] += 1
            self._changed.set()
            self._changed = asyncio.Event()
            if name == "block":
                await self.release.wait()
            return Response(f"{name} found {body.get('x')}")

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])

    async def wait_calls(self, name: str, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while self.calls[name] < count:
                await self._changed.wait()


# -- the stack --------------------------------------------------------------------


def _tool(tools_url: str, name: str) -> dict[str, Any]:
    return {
        "type": "http",
        "description": f"The {name} tool.",
        "url": f"{tools_url}/tools/{name}",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        "timeout": 30,
    }


@dataclass
class Stack:
    receiver: Receiver
    upstream: UpstreamHeaders
    tools: ToolServer
    model: ScriptedModel
    receiver_url: str
    upstream_url: str
    tools_url: str
    tmp_path: Path

    @property
    def database(self) -> Path:
        return self.tmp_path / "stepline.db"

    def script(self, name: str, turns: list[dict[str, Any]]) -> None:
        self.model.register(name, Script.from_dict({"turns": turns}))

    def server(self, tracing: dict[str, Any] | None = None) -> ServerProcess:
        config: dict[str, Any] = {
            "upstreams": {
                "scripted": {
                    "base_url": f"{self.upstream_url}/v1",
                    "max_retries": 0,
                    "timeouts": {"connect": 2, "first_byte": 10, "chunk": 10, "total": 60},
                }
            },
            "default_model": {"upstream": "scripted", "tools": ["lookup", "block", "helper"]},
            "tools": {
                "lookup": _tool(self.tools_url, "lookup"),
                "block": _tool(self.tools_url, "block"),
                "helper": {
                    "type": "agent",
                    "description": "A helper sub-agent.",
                    "model": "helper",
                    "instructions": "You help.",
                    "tools": ["lookup"],
                },
            },
            "limits": {"lease_seconds": 1.5},
        }
        if tracing is not None:
            config["tracing"] = tracing
        path = self.tmp_path / "stepline.toml"
        path.write_text(to_toml(config))
        return ServerProcess(
            config=path, database=self.database, port=free_port(), log_dir=self.tmp_path
        )


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    ):
        monkeypatch.delenv(name, raising=False)
    # spans leave the process 50 ms after they end, not the default 5 s
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    async with AsyncExitStack() as exits:
        receiver, tools = Receiver(), ToolServer()
        model = ScriptedModel(demo_token_delay=0)
        upstream = UpstreamHeaders(create_scripted_app(model))
        receiver_url = await exits.enter_async_context(serve_app(receiver.app()))
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        exits.callback(tools.release.set)
        upstream_url = await exits.enter_async_context(serve_app(upstream, shutdown_timeout=1))
        yield Stack(
            receiver=receiver,
            upstream=upstream,
            tools=tools,
            model=model,
            receiver_url=receiver_url,
            upstream_url=upstream_url,
            tools_url=tools_url,
            tmp_path=tmp_path,
        )


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


# -- reading the store ------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    id: str
    scope: str | None
    kind: str
    state: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    call_id: str | None
    attempt: int
    started_at: float
    finished_at: float


def stored_steps(database: Path, response_id: str) -> list[Stored]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute(
            "SELECT id, scope, kind, state, request, response, call_id, attempt, started_at,"
            " finished_at FROM steps WHERE response_id = ? ORDER BY sequence",
            (response_id,),
        ).fetchall()
    return [
        Stored(
            id=row[0],
            scope=row[1],
            kind=row[2],
            state=row[3],
            request=orjson.loads(row[4]),
            response=orjson.loads(row[5]) if row[5] else None,
            call_id=row[6],
            attempt=row[7],
            started_at=row[8],
            finished_at=row[9],
        )
        for row in rows
    ]


def stored_created_at(database: Path, response_id: str) -> float:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        row = db.execute("SELECT created_at FROM responses WHERE id = ?", (response_id,)).fetchone()
    created: float = row[0]
    return created


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


#: the model each agent tool's sub-agent calls (the stack's config)
AGENT_MODELS = {"helper": "helper"}


def _model(step: Stored, steps: list[Stored], top_model: str) -> str:
    """The model a model call step called: its response's, or its sub-agent's."""
    if step.scope is None:
        return top_model
    caller = next(other for other in steps if other.id == step.scope)
    return AGENT_MODELS[caller.request["name"]]


def _span_name(step: Stored, steps: list[Stored], top_model: str) -> str:
    if step.kind == "model_call":
        return f"chat {_model(step, steps, top_model)}"
    return f"execute_tool {step.request['name']}"


Key = tuple[str, str | None]


def expected_tree(steps: list[Stored], model: str) -> list[tuple[Key, Key]]:
    """(span, parent) of every span the stored chain implies, by (name, step id)."""
    root: Key = (f"invoke_agent {model}", None)
    by_id = {step.id: step for step in steps}
    tree: list[tuple[Key, Key]] = [(root, ("client", None))]
    for step in steps:
        parent = root
        if step.scope is not None:
            caller = by_id[step.scope]
            parent = (f"invoke_agent {caller.request['name']}", caller.id)
        tree.append(((_span_name(step, steps, model), step.id), parent))
        if step.kind == "tool_call" and step.request["name"] in AGENT_MODELS:
            agent = (f"invoke_agent {step.request['name']}", step.id)
            tree.append((agent, (_span_name(step, steps, model), step.id)))
    return sorted(tree, key=repr)


def exported_tree(spans: list[ReceivedSpan], client_span: str) -> list[tuple[Key, Key]]:
    keys: dict[str, Key] = {
        span.span_id: (span.name, span.attributes.get("stepline.step.id")) for span in spans
    }
    keys[client_span] = ("client", None)
    return sorted(
        ((keys[span.span_id], keys.get(span.parent_span_id, ("?", None))) for span in spans),
        key=repr,
    )


def traceparent(span: ReceivedSpan) -> str:
    """A ``traceparent`` naming ``span`` (its flags say sampled, and maybe random ids)."""
    return f"00-{span.trace_id}-{span.span_id}"


def named(headers: list[str]) -> list[str]:
    """The trace and span ids of ``traceparent`` headers, without their flags."""
    return [header.rsplit("-", 1)[0] for header in headers]


# -- the tests --------------------------------------------------------------------


async def test_a_response_with_a_tool_and_a_sub_agent_exports_its_stored_chain_as_a_trace(
    stack: Stack, servers: list[ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stack.receiver_url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stepline-test")
    stack.script(
        "boss",
        [
            {
                "tool_calls": [
                    {"name": "lookup", "arguments": {"x": "a"}},
                    {"name": "helper", "arguments": {"input": "dig deeper"}},
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3},
            },
            {"content": "All found.", "usage": {"prompt_tokens": 30, "completion_tokens": 4}},
        ],
    )
    stack.script(
        "helper",
        [
            {"tool_calls": [{"name": "lookup", "arguments": {"x": "b"}}]},
            {"content": "found b"},
        ],
    )
    server = stack.server()
    servers.append(server)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        reply = await client.post(
            "/v1/responses",
            json={"model": "boss", "input": "look it up", "temperature": 0.5},
            headers={"traceparent": CLIENT_TRACEPARENT},
        )
        assert reply.status_code == 200, reply.text
        response = reply.json()
        stored = (await client.get(f"/v1/responses/{response['id']}")).json()
    assert response["status"] == "completed", response
    assert stored == response

    root = await stack.receiver.response_span(response["id"])
    spans = stack.receiver.trace(CLIENT_TRACE)
    steps = stored_steps(stack.database, response["id"])
    assert [(step.kind, step.scope is None, step.state) for step in steps] == [
        ("model_call", True, "completed"),
        ("tool_call", True, "completed"),
        ("tool_call", True, "completed"),
        ("model_call", False, "completed"),
        ("tool_call", False, "completed"),
        ("model_call", False, "completed"),
        ("model_call", True, "completed"),
    ]
    # the tree: every stored step is one span, under the span the chain implies
    assert exported_tree(spans, CLIENT_SPAN) == expected_tree(steps, "boss")
    assert len(spans) == len(steps) + 2
    assert root.parent_span_id == CLIENT_SPAN
    assert {span.service for span in spans} == {"stepline-test"}
    assert {span.attributes["stepline.response.id"] for span in spans} == {response["id"]}
    assert root.attributes == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "boss",
        "gen_ai.request.model": "boss",
        "stepline.response.id": response["id"],
        "stepline.response.status": "completed",
        "gen_ai.usage.input_tokens": response["usage"]["input_tokens"],
        "gen_ai.usage.output_tokens": response["usage"]["output_tokens"],
    }
    assert root.start == _ns(stored_created_at(stack.database, response["id"]))
    span_of = {
        (span.attributes.get("stepline.step.id"), span.attributes["gen_ai.operation.name"]): span
        for span in spans
    }
    agent = span_of[steps[2].id, "invoke_agent"]
    assert agent.attributes["gen_ai.agent.name"] == "helper"
    assert agent.attributes["gen_ai.request.model"] == "helper"
    for step in steps:
        operation = "chat" if step.kind == "model_call" else "execute_tool"
        span = span_of[step.id, operation]
        assert (span.start, span.end) == (_ns(step.started_at), _ns(step.finished_at))
        assert span.attributes["stepline.step.attempt"] == step.attempt
        assert span.status_code != STATUS_ERROR
        if step.kind == "model_call":
            assert step.response is not None
            assert span.kind == CLIENT
            model = _model(step, steps, "boss")
            assert span.attributes["gen_ai.request.model"] == model
            # the model the upstream said answered: stored, and on the span
            assert span.attributes["gen_ai.response.model"] == step.response["model"] == model
            usage = step.response["usage"]
            assert span.attributes["gen_ai.usage.input_tokens"] == usage["input_tokens"]
            assert span.attributes["gen_ai.usage.output_tokens"] == usage["output_tokens"]
            assert span.attributes["gen_ai.response.finish_reasons"] == [
                step.response["finish_reason"]
            ]
        else:
            assert span.kind == INTERNAL
            assert span.attributes["gen_ai.tool.name"] == step.request["name"]
            assert span.attributes["gen_ai.tool.call.id"] == step.call_id
    assert span_of[steps[0].id, "chat"].attributes["gen_ai.request.temperature"] == 0.5
    assert [
        span_of[step.id, "chat"].attributes["gen_ai.response.finish_reasons"]
        for step in (steps[0], steps[6])
    ] == [["tool_calls"], ["stop"]]
    # what GET shows ran is what the top-level execute_tool spans name
    calls = [item["name"] for item in response["output"] if item["type"] == "mcp_call"]
    assert calls == [
        span.attributes["gen_ai.tool.name"]
        for span in sorted(spans, key=lambda span: span.start)
        if span.parent_span_id == root.span_id and span.name.startswith("execute_tool")
    ]
    # no content unless the operator opts in
    content = {"gen_ai.input.messages", "gen_ai.output.messages"}
    content |= {"gen_ai.tool.call.arguments", "gen_ai.tool.call.result"}
    assert [name for span in spans for name in span.attributes if name in content] == []

    # the trace goes on into every request a step sent
    model_steps = [step for step in steps if step.kind == "model_call"]
    assert {step.id: named(stack.upstream.traceparents[step.id]) for step in model_steps} == {
        step.id: [traceparent(span_of[step.id, "chat"])] for step in model_steps
    }
    lookups = [step for step in steps if step.request.get("name") == "lookup"]
    assert {step.id: named(stack.tools.traceparents[step.id]) for step in lookups} == {
        step.id: [traceparent(span_of[step.id, "execute_tool"])] for step in lookups
    }


async def test_a_run_resumed_by_another_process_starts_a_trace_linked_to_the_clients(
    stack: Stack, servers: list[ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stack.receiver_url)
    stack.script(
        "boss",
        [{"tool_calls": [{"name": "block", "arguments": {"x": "a"}}]}, {"content": "Done."}],
    )
    first = stack.server()
    servers.append(first)
    await first.start()
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        reply = await client.post(
            "/v1/responses",
            json={"model": "boss", "input": "go", "background": True},
            headers={"traceparent": CLIENT_TRACEPARENT},
        )
        assert reply.status_code == 200, reply.text
    response_id = reply.json()["id"]
    await stack.tools.wait_calls("block", 1)
    first.kill9()

    await first.start()  # a new process on the same database takes the response over
    await stack.tools.wait_calls("block", 2)
    stack.tools.release.set()
    root = await stack.receiver.response_span(response_id, resumed=True)
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        final = (await client.get(f"/v1/responses/{response_id}")).json()
    assert final["status"] == "completed", final

    # a new trace, linked to the context the client created the response in
    assert root.trace_id != CLIENT_TRACE
    assert root.parent_span_id == ""
    assert root.links == [(CLIENT_TRACE, CLIENT_SPAN, {"stepline.link": "resumed_from"})]
    assert root.attributes["stepline.response.resumed"] is True
    steps = stored_steps(stack.database, response_id)
    block, answer = steps[1], steps[2]
    assert (block.request["name"], block.attempt, answer.kind) == ("block", 2, "model_call")
    resumed = stack.receiver.trace(root.trace_id)
    assert exported_tree(resumed, CLIENT_SPAN) == sorted(
        [
            (("invoke_agent boss", None), ("?", None)),
            (("execute_tool block", block.id), ("invoke_agent boss", None)),
            (("chat boss", answer.id), ("invoke_agent boss", None)),
        ],
        key=repr,
    )
    span_of = {span.attributes.get("stepline.step.id"): span for span in resumed}
    assert span_of[block.id].attributes["stepline.step.attempt"] == 2
    # the tool's second try and the model call after it carry the new trace
    assert named(stack.tools.traceparents[block.id])[1] == traceparent(span_of[block.id])
    assert named(stack.upstream.traceparents[answer.id]) == [traceparent(span_of[answer.id])]
    # the first try carried the client's trace
    assert stack.tools.traceparents[block.id][0].split("-")[1] == CLIENT_TRACE


async def test_a_websocket_turn_is_traced_with_content_when_the_config_opts_in(
    stack: Stack, servers: list[ServerProcess]
) -> None:
    stack.script(
        "boss",
        [
            {"tool_calls": [{"name": "lookup", "arguments": {"x": "a"}}]},
            {"content": "It is a."},
        ],
    )
    server = stack.server(
        tracing={
            "endpoint": stack.receiver_url,
            "service_name": "stepline-ws",
            "capture_content": True,
        }
    )
    servers.append(server)
    await server.start()
    url = server.url.replace("http://", "ws://", 1) + "/v1/responses"
    async with connect(url, additional_headers={"traceparent": CLIENT_TRACEPARENT}) as socket:
        await socket.send(
            orjson.dumps(
                {"type": "response.create", "model": "boss", "input": "what is it?"}
            ).decode()
        )
        while True:
            async with asyncio.timeout(20):
                event = orjson.loads(await socket.recv())
            if event["type"] in ("response.completed", "response.failed", "error"):
                break
    assert event["type"] == "response.completed", event
    response_id = event["response"]["id"]

    root = await stack.receiver.response_span(response_id)
    assert (root.trace_id, root.parent_span_id, root.service) == (
        CLIENT_TRACE,
        CLIENT_SPAN,
        "stepline-ws",
    )
    steps = stored_steps(stack.database, response_id)
    spans = stack.receiver.trace(CLIENT_TRACE)
    assert exported_tree(spans, CLIENT_SPAN) == expected_tree(steps, "boss")
    span_of = {span.attributes.get("stepline.step.id"): span for span in spans}
    ask, tool, answer = (span_of[step.id].attributes for step in steps)
    assert orjson.loads(ask["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "what is it?"}]}
    ]
    call_id = steps[1].call_id
    assert orjson.loads(ask["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "tool_call", "id": call_id, "name": "lookup", "arguments": '{"x":"a"}'}
            ],
            "finish_reason": "tool_calls",
        }
    ]
    assert (tool["gen_ai.tool.call.arguments"], tool["gen_ai.tool.call.result"]) == (
        '{"x":"a"}',
        "lookup found a",
    )
    assert orjson.loads(answer["gen_ai.input.messages"])[-1] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": call_id, "response": "lookup found a"}],
    }
    assert orjson.loads(answer["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "It is a."}],
            "finish_reason": "stop",
        }
    ]
    assert named(stack.tools.traceparents[steps[1].id]) == [traceparent(span_of[steps[1].id])]
