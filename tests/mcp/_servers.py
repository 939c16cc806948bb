"""Real MCP servers for the MCP source tests, built with the SDK's ``MCPServer``.

``build_server`` registers the tools the tests call and a middleware that
records, server-side, every method a client sent and the HTTP headers it
carried. ``legacy=True`` refuses ``server/discover``, the way a 2025-era
server does, so clients fall back to the stateful ``initialize`` handshake.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, METHOD_NOT_FOUND, CallToolResult, ImageContent
from starlette.requests import Request

FAIL_MESSAGE = "the fail tool always fails"
REFUSE_MESSAGE = "refused on purpose"


@dataclass
class Recorder:
    """What the server saw: methods by count, tools called, headers of each request."""

    methods: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    headers: list[dict[str, str]] = field(default_factory=list)
    #: set when a call of ``hold`` has reached the server
    holding: asyncio.Event = field(default_factory=asyncio.Event)


def build_server(recorder: Recorder, *, legacy: bool = False) -> MCPServer:
    server = MCPServer("test-tools", log_level="CRITICAL")

    async def record(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is not None:
            recorder.methods[ctx.method] += 1
            if ctx.method == "tools/call" and ctx.params:
                recorder.calls[str(ctx.params.get("name"))] += 1
            if isinstance(ctx.request, Request):  # None on stdio
                recorder.headers.append(dict(ctx.request.headers))
        if legacy and ctx.method == "server/discover":
            raise MCPError(METHOD_NOT_FOUND, "Method not found")
        return await call_next(ctx)

    server.middleware.append(record)

    @server.tool(description="Add two integers")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Echo the text back")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Always fails")
    def fail() -> str:
        raise ToolError(FAIL_MESSAGE)

    @server.tool(description="Answers with a protocol error")
    def refuse() -> str:
        raise MCPError(INVALID_PARAMS, REFUSE_MESSAGE)

    @server.tool(description="Never answers")
    async def slow() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    @server.tool(description="Structured content only")
    def forecast(city: str) -> CallToolResult:
        return CallToolResult(content=[], structured_content={"city": city, "celsius": 21.5})

    @server.tool(description="An image and nothing else")
    def picture() -> CallToolResult:
        image = ImageContent(type="image", data="aGk=", mime_type="image/png")
        return CallToolResult(content=[image])

    @server.tool(description="Waits until several calls are in flight at once")
    async def gather_point(n: int) -> str:
        # Answers only once n calls of this tool are running together: a
        # client that sends calls one at a time would never get an answer.
        recorder.calls["gather_point:waiting"] += 1
        if recorder.calls["gather_point:waiting"] >= n:
            recorder.holding.set()
        await recorder.holding.wait()
        return f"released {n}"

    return server
