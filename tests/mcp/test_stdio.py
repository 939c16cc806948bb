"""An MCP source running a stdio MCP server (``stdio_server.py``) as a child process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import pytest

from stepline._tools.mcp import McpSource, McpSourceConfig
from stepline.errors import ToolError

pytestmark = pytest.mark.timeout(20)

SERVER = str(Path(__file__).with_name("stdio_server.py"))


def _source(**config: object) -> McpSource:
    return McpSource(
        "local",
        McpSourceConfig.model_validate({"command": sys.executable, "args": [SERVER], **config}),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_stdio_lists_calls_and_passes_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TEST_TOKEN", "tok-45678901")
    # a replaced sys.stderr without a file descriptor must not stop the child
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    source = _source(
        allowed_tools=["add", "getenv", "pid"],
        env={"TOKEN": "env:MCP_TEST_TOKEN", "PLAIN": "visible"},
    )
    try:
        assert [tool.name for tool in await source.list_tools()] == ["add", "pid", "getenv"]
        results = await asyncio.gather(
            source.call("add", {"a": 3, "b": 4}),
            source.call("getenv", {"name": "PLAIN"}),
            source.call("getenv", {"name": "TOKEN"}),
        )
        assert list(results) == ["7", "visible", "***"]  # the secret reached it, and is masked
        pid = int(await source.call("pid", {}))
        assert _alive(pid)
    finally:
        await source.aclose()
    assert not _alive(pid)


async def test_stdio_process_death_is_survived() -> None:
    source = _source()
    try:
        await source.list_tools()
        first = int(await source.call("pid", {}))
        os.kill(first, signal.SIGKILL)
        # the dead session is noticed, a new process started and the call sent again
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
        second = int(await source.call("pid", {}))
        assert second != first
        # the failure made the cached listing stale: the new process is asked
        listed = int(await source.call("listing_count", {}))
        await source.list_tools()
        assert int(await source.call("listing_count", {})) == listed + 1
    finally:
        await source.aclose()
    assert not _alive(first)
    assert not _alive(second)


async def test_stdio_command_that_cannot_start() -> None:
    source = McpSource("nothing", McpSourceConfig(command="/nonexistent/mcp-server"))
    try:
        with pytest.raises(ToolError, match="could not be reached"):
            await source.call("add", {"a": 1, "b": 2})
    finally:
        await source.aclose()
