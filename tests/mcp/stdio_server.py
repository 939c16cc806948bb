"""A stdio MCP server for the MCP source tests; run as ``python stdio_server.py``.

Each process counts its own ``tools/list`` requests, so a test can tell a
cached listing from a new one and a new process from the old one.
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer

server = MCPServer("stdio-tools", log_level="WARNING")
listings = 0


async def count_listings(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    global listings
    if ctx.method == "tools/list":
        listings += 1
    return await call_next(ctx)


server.middleware.append(count_listings)


@server.tool(description="Add two integers")
def add(a: int, b: int) -> int:
    return a + b


@server.tool(description="Echo the text back")
def echo(text: str) -> str:
    return text


@server.tool(description="This process's id")
def pid() -> int:
    return os.getpid()


@server.tool(description="How many tool listings this process answered")
def listing_count() -> int:
    return listings


@server.tool(description="An environment variable of this process")
def getenv(name: str) -> str:
    return os.environ.get(name, "<unset>")


if __name__ == "__main__":
    server.run("stdio")
