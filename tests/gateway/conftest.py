"""Gateway fixtures: stepline with API keys, the scripted model and HTTP tools, on real sockets.

``gateway_factory`` starts a tool server, the scripted model (behind a recorder
that keeps the ``Authorization`` header each call carried) and stepline on
SQLite in a temporary directory, with the keys asked for. Each key's token is
generated here; the config holds only its hash, as an operator's would.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._server.auth import hash_token, new_token
from stepline._upstream.client import ChatClient
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app


@dataclass
class ToolServer:
    """HTTP tools for tests: counts calls, keeps their headers, can hold one open."""

    calls: Counter[str] = field(default_factory=Counter)
    headers: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            body = orjson.loads(await request.body() or b"{}")
            self.calls[name] += 1
            self.headers.setdefault(name, []).append(dict(request.headers))
            auth = request.headers.get("authorization", "")
            if name == "hang":
                self.entered.set()
                await self.release.wait()
            if name == "echo_auth":  # a careless tool that echoes its credentials
                return Response(f"you sent {auth}")
            if name == "fail_auth":
                return Response(f"denied for {auth}", status_code=500)
            if name == "long":
                return Response("x" * 500)
            if name == "weather":
                return Response(
                    orjson.dumps({"city": body.get("city"), "conditions": "sunny"}),
                    media_type="application/json",
                )
            return Response(f"{name} result for {orjson.dumps(body).decode()}")

        return Starlette(routes=[Route("/tools/{name}", handle, methods=["POST"])])


@dataclass
class HeaderRecorder:
    """An ASGI wrapper keeping the Authorization header of every request it passes on."""

    app: ASGIApp
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization":
                    self.seen.append(value.decode())
        await self.app(scope, receive, send)


def http_tool(tools_url: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "description": f"The {name} tool.",
        "url": f"{tools_url}/tools/{name}",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "timeout": 5,
        **extra,
    }


TOOL_NAMES = ("weather", "stock", "echo_auth", "fail_auth", "long", "hang")


def base_settings(database_url: str, upstream_url: str, tools_url: str) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "upstreams": {
            "scripted": {
                "base_url": f"{upstream_url}/v1",
                "max_retries": 0,
                "timeouts": {"connect": 2, "first_byte": 10, "chunk": 10, "total": 30},
            }
        },
        "models": [
            {"name": "alpha", "upstream": "scripted", "tools": ["weather", "stock"]},
            {"name": "beta", "upstream": "scripted"},
        ],
        "default_model": {"upstream": "scripted", "tools": list(TOOL_NAMES)},
        "tools": {name: http_tool(tools_url, name) for name in TOOL_NAMES},
    }


@dataclass
class Gateway:
    url: str
    app: FastAPI
    http: httpx.AsyncClient
    model: ScriptedModel
    upstream: HeaderRecorder
    tools: ToolServer
    tools_url: str
    upstream_url: str
    database_path: Path
    tokens: dict[str, str]
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    def script(self, name: str, turns: list[dict[str, Any]], **options: Any) -> str:
        self.model.register(name, Script.from_dict({"turns": turns, **options}))
        return name

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key]}"}

    def client(self, key: str | None) -> openai.AsyncOpenAI:
        """An SDK client with ``key``'s token (closed with the stack)."""
        token = self.tokens[key] if key is not None else "unused"
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


class GatewayFactory(Protocol):
    """The ``gateway_factory`` fixture: ``await gateway_factory(...)`` is a running stack."""

    def __call__(
        self,
        *,
        keys: dict[str, dict[str, Any]] | None = None,
        change: Callable[[dict[str, Any]], None] | None = None,
        chat: ChatClient | None = None,
        allow_anonymous: bool = True,
    ) -> Awaitable[Gateway]: ...


@pytest.fixture
async def gateway_factory(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """``start(keys={name: {limits}}, change=fn(settings dict), ...)``: a running stack.

    ``change`` edits the settings dict before it is validated; ``chat`` and
    ``allow_anonymous`` go to ``create_app``.
    """
    async with AsyncExitStack() as exits:
        counter = 0

        async def start(
            *,
            keys: dict[str, dict[str, Any]] | None = None,
            change: Callable[[dict[str, Any]], None] | None = None,
            chat: ChatClient | None = None,
            allow_anonymous: bool = True,
        ) -> Gateway:
            nonlocal counter
            counter += 1
            tools = ToolServer()
            model = ScriptedModel(demo_token_delay=0)
            tools_url = await exits.enter_async_context(serve_app(tools.app()))
            exits.callback(tools.release.set)
            upstream = HeaderRecorder(create_scripted_app(model))
            upstream_url = await exits.enter_async_context(serve_app(upstream))
            database_path = tmp_path / f"gateway-{counter}.db"
            data = base_settings(f"sqlite:///{database_path}", upstream_url, tools_url)
            tokens: dict[str, str] = {}
            if keys:
                data["keys"] = {}
                for name, limits in keys.items():
                    tokens[name] = new_token()
                    data["keys"][name] = {"hash": hash_token(tokens[name]), **limits}
            if change is not None:
                change(data)
            settings = Settings.model_validate(data)
            app = create_app(settings, shutdown_grace=5, chat=chat, allow_anonymous=allow_anonymous)
            url = await exits.enter_async_context(serve_app(app))
            http = httpx.AsyncClient(base_url=url, timeout=30)
            exits.push_async_callback(http.aclose)
            gateway = Gateway(
                url=url,
                app=app,
                http=http,
                model=model,
                upstream=upstream,
                tools=tools,
                tools_url=tools_url,
                upstream_url=upstream_url,
                database_path=database_path,
                tokens=tokens,
            )
            exits.push_async_callback(gateway.aclose)
            return gateway

        yield start


async def read_sse(response: httpx.Response) -> list[dict[str, Any]]:
    """Every event of an SSE body (the ``data: [DONE]`` end marker checked, then dropped)."""
    text = (await response.aread()).decode()
    blocks = [block for block in text.split("\n\n") if block]
    assert blocks[-1] == "data: [DONE]", blocks[-1]
    return [orjson.loads(block.split("\ndata: ", 1)[1]) for block in blocks[:-1]]
