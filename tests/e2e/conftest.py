"""End-to-end fixtures: stepline, the scripted model and HTTP tools, each on a real socket.

``stack`` starts a tool server, the scripted model and stepline (on SQLite in
a temporary directory), and hands the test an ``openai.AsyncOpenAI`` client
pointed at stepline. Tests register scripts on ``stack.model`` and read what
the tools and the upstream received.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import (
    ResponseInputMessageItem,
    ResponseInputText,
    ResponseItem,
    ResponseOutputMessage,
    ResponseOutputText,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._config import Settings
from stepline._server.app import create_app
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from stepline.store._sql import open_store
from tests._backends import SQL_KINDS, backend_params
from tests._backends import database_url as backend_database


@dataclass
class ToolServer:
    """HTTP tools for tests; counts calls and records each call's idempotency key."""

    calls: Counter[str] = field(default_factory=Counter)
    keys: dict[str, list[str]] = field(default_factory=dict)
    bodies: dict[str, list[Any]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            body = orjson.loads(await request.body() or b"{}")
            self.calls[name] += 1
            self.keys.setdefault(name, []).append(request.headers.get("idempotency-key", ""))
            self.bodies.setdefault(name, []).append(body)
            if name == "fail":
                return Response("tool exploded", status_code=500)
            if name == "hang":
                await self.release.wait()
            if name == "weather":
                return Response(
                    orjson.dumps({"city": body.get("city"), "conditions": "sunny"}),
                    media_type="application/json",
                )
            return Response(f"{name} result for {orjson.dumps(body).decode()}")

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])


def _settings(database_url: str, upstream: str, tools_url: str, **limits: Any) -> Settings:
    def http(name: str, properties: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        return {
            "type": "http",
            "description": f"The {name} tool.",
            "url": f"{tools_url}/tools/{name}",
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
            },
            "timeout": timeout,
        }

    return Settings.model_validate(
        {
            "database_url": database_url,
            "upstreams": {
                "scripted": {
                    "base_url": f"{upstream}/v1",
                    "max_retries": 0,
                    "timeouts": {"connect": 2, "first_byte": 10, "chunk": 10, "total": 30},
                }
            },
            "default_model": {
                "upstream": "scripted",
                "tools": ["weather", "stock", "fail", "hang", "researcher"],
            },
            "tools": {
                "weather": http("weather", {"city": {"type": "string"}}),
                "stock": http("stock", {"symbol": {"type": "string"}}),
                "fail": http("fail", {}),
                "hang": http("hang", {}, timeout=0.3),
                "researcher": {
                    "type": "agent",
                    "description": "A research sub-agent.",
                    "model": "researcher",
                    "instructions": "You research things.",
                    "tools": ["weather"],
                },
            },
            "limits": limits,
        }
    )


@dataclass
class Stack:
    url: str
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    model: ScriptedModel
    tools: ToolServer
    database_url: str

    def script(self, name: str, turns: list[dict[str, Any]], **options: Any) -> str:
        self.model.register(name, Script.from_dict({"turns": turns, **options}))
        return name


StackFactory = Callable[..., Any]


@pytest.fixture(params=backend_params(SQL_KINDS))
async def stack_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StackFactory]:
    """Start a stack with optional ``limits`` on the test's database backend
    (SQLite and PostgreSQL); every stack stops with the test."""
    async with AsyncExitStack() as exits:

        async def start(**limits: Any) -> Stack:
            return await serve_stack(exits, request.param, tmp_path, **limits)

        yield start


#: edits the stack's settings (as a dict) before they are validated; gets the tools' URL
Configure = Callable[[dict[str, Any], str], None]


async def serve_stack(
    exits: AsyncExitStack,
    backend: str,
    tmp_path: Path,
    *,
    tools: ToolServer | None = None,
    configure: Configure | None = None,
    api_key: str = "test",
    **limits: Any,
) -> Stack:
    """Start a tool server, the scripted model and stepline on ``backend``; they stop
    with ``exits``. ``configure`` may change the settings first; ``api_key`` is the
    stack's client's."""
    database_url = await exits.enter_async_context(backend_database(backend, tmp_path))
    tools = tools or ToolServer()
    model = ScriptedModel(demo_token_delay=0)
    tools_url = await exits.enter_async_context(serve_app(tools.app()))
    exits.callback(tools.release.set)
    upstream = await exits.enter_async_context(serve_app(create_scripted_app(model)))
    settings = _settings(database_url, upstream, tools_url, **limits)
    if configure is not None:
        data = settings.model_dump()
        configure(data, tools_url)
        settings = Settings.model_validate(data)
    url = await exits.enter_async_context(serve_app(create_app(settings, shutdown_grace=5)))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)
    exits.push_async_callback(client.close)
    http = httpx.AsyncClient(base_url=url, timeout=30)
    exits.push_async_callback(http.aclose)
    return Stack(
        url=url, client=client, http=http, model=model, tools=tools, database_url=database_url
    )


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    started: Stack = await stack_factory()
    return started


_ID = re.compile(r"^(resp|msg|fc|rs|mcp|call|step)_[A-Za-z0-9_]+$")


def normalise_ids(value: Any, names: dict[str, str] | None = None) -> Any:
    """Replace generated ids by placeholders in order of appearance (``<msg:0>``)."""
    names = {} if names is None else names
    if isinstance(value, dict):
        return {key: normalise_ids(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise_ids(item, names) for item in value]
    if isinstance(value, str) and _ID.match(value):
        if value not in names:
            kind = value.split("_", 1)[0]
            names[value] = f"<{kind}:{sum(1 for v in names.values() if v.startswith('<' + kind))}>"
        return names[value]
    return value


def first_text(item: ResponseItem) -> str:
    """The text of a message item's first content part; any other item fails the test."""
    assert isinstance(item, ResponseInputMessageItem | ResponseOutputMessage), item
    part = item.content[0]
    assert isinstance(part, ResponseInputText | ResponseOutputText), part
    return part.text


async def read_sse(response: httpx.Response) -> list[dict[str, Any]]:
    """Every event of an SSE body, checking the framing: ``event:`` equals ``type``."""
    events: list[dict[str, Any]] = []
    done = False
    async for block in _blocks(response):
        lines = block.split("\n")
        if lines == ["data: [DONE]"]:
            done = True
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        event = orjson.loads(lines[1][len("data: ") :])
        assert event["type"] == lines[0][len("event: ") :]
        events.append(event)
    assert done, "the stream did not end with data: [DONE]"
    return events


async def _blocks(response: httpx.Response) -> AsyncIterator[str]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield block


async def open_store_for(stack: Stack) -> Any:
    return await open_store(stack.database_url, migrate=False)
