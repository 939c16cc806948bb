"""MCP fixtures: a real MCP server on a real socket, which a test can stop and restart.

``mcp_http`` serves :func:`tests.mcp._servers.build_server` over Streamable
HTTP with ``serve_app``; ``running()`` starts it (on the same port each
time after the first), so a test can drop the server between two calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from stepline.scripted import serve_app
from tests.mcp._servers import Recorder, build_server


@dataclass
class McpHttpServer:
    legacy: bool = False
    recorder: Recorder = field(default_factory=Recorder)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve a fresh server (it knows no earlier session); yields the MCP URL."""
        app = build_server(self.recorder, legacy=self.legacy).streamable_http_app()
        # A legacy session keeps a server-sent event stream open, which a
        # graceful shutdown would wait on: stop at once, as a crash would.
        async with serve_app(app, port=self.port, shutdown_timeout=0 if self.legacy else 5) as base:
            self.port = int(base.rsplit(":", 1)[1])
            yield self.url


@pytest.fixture
async def mcp_http() -> AsyncIterator[McpHttpServer]:
    server = McpHttpServer()
    async with server.running():
        yield server
