"""An MCP source talking Streamable HTTP to a real MCP server on a real socket.

The server records every request it answers (see ``tests/mcp/_servers.py``),
so each test checks what reached it: how many connections were opened
(``server/discover`` / ``initialize``), how many listings, which headers.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from starlette.types import Receive, Scope, Send

from stepline._tools.mcp import McpSource, McpSourceConfig
from stepline._tools.registry import ToolCallContext
from stepline.errors import ToolError
from stepline.scripted import serve_app
from tests.mcp._servers import FAIL_MESSAGE, REFUSE_MESSAGE
from tests.mcp.conftest import McpHttpServer

pytestmark = pytest.mark.timeout(15)


def _source(url: str, **config: object) -> McpSource:
    return McpSource("calc", McpSourceConfig.model_validate({"url": url, **config}))


async def test_lists_tools_on_the_allow_list(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url, allowed_tools=["add", "echo", "absent"]) as source:
        tools = await source.list_tools()
    assert [tool.name for tool in tools] == ["add", "echo"]
    add = tools[0]
    assert add.description == "Add two integers"
    assert add.input_schema["type"] == "object"
    assert set(add.input_schema["properties"]) == {"a", "b"}
    assert add.input_schema["required"] == ["a", "b"]


async def test_calls_return_text_and_structured_content(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url) as source:
        assert await source.call("add", {"a": 2, "b": 40}) == "42"
        assert await source.call("echo", {"text": "hello"}) == "hello"
        forecast = await source.call("forecast", {"city": "Oslo"})
        # neither text nor structured content: the model learns what it got
        assert await source.call("picture", {}) == "[image content]"
    assert orjson.loads(forecast) == {"city": "Oslo", "celsius": 21.5}
    # one connection for every call
    assert mcp_http.recorder.methods["server/discover"] == 1


async def test_parallel_calls_share_one_session(mcp_http: McpHttpServer) -> None:
    # gather_point answers only once all four calls are running on the server
    async with _source(mcp_http.url) as source:
        outputs = await asyncio.gather(*(source.call("gather_point", {"n": 4}) for _ in range(4)))
    assert outputs == ["released 4"] * 4
    assert mcp_http.recorder.methods["server/discover"] == 1
    assert mcp_http.recorder.calls["gather_point"] == 4


async def test_error_result_becomes_tool_error(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url) as source:
        with pytest.raises(ToolError) as caught:
            await source.call("fail", {})
    assert FAIL_MESSAGE in caught.value.message
    assert caught.value.tool == "calc__fail"


async def test_protocol_error_becomes_tool_error(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url) as source:
        with pytest.raises(ToolError) as caught:
            await source.call("refuse", {})
        assert REFUSE_MESSAGE in caught.value.message
        # a refused request leaves the session usable
        assert await source.call("add", {"a": 1, "b": 1}) == "2"
    assert mcp_http.recorder.methods["server/discover"] == 1


async def test_timeout_becomes_tool_error_and_keeps_the_session(mcp_http: McpHttpServer) -> None:
    # the timeout also bounds the call after it: long enough for a loaded machine
    async with _source(mcp_http.url, timeout=1.5) as source:
        with pytest.raises(ToolError) as caught:
            await source.call("slow", {})
        assert "timeout of 1.5s" in caught.value.message
        assert caught.value.tool == "calc__slow"
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
    assert mcp_http.recorder.calls["slow"] == 1  # a timed-out call is not sent again
    assert mcp_http.recorder.methods["server/discover"] == 1


async def _never_answers(scope: Scope, receive: Receive, send: Send) -> None:
    """An HTTP endpoint that accepts every request and answers none of them."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def test_a_server_that_never_finishes_the_handshake_cannot_hold_the_source() -> None:
    async with serve_app(_never_answers, lifespan="off") as base:
        source = _source(f"{base}/mcp", timeout=0.3)
        for _ in range(2):  # each call starts its own handshake and gives up on it
            with pytest.raises(ToolError, match=r"timeout of 0\.3s"):
                await source.call("add", {"a": 1, "b": 2})
        async with asyncio.timeout(2):
            await source.aclose()


async def test_a_tool_outside_the_allow_list_is_never_called(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url, allowed_tools=["add"]) as source:
        with pytest.raises(ToolError, match="no allowed tool 'echo'"):
            await source.call("echo", {"text": "hi"})
    assert mcp_http.recorder.calls["echo"] == 0


async def test_tool_list_is_cached_until_refresh_or_failure(mcp_http: McpHttpServer) -> None:
    listings = mcp_http.recorder.methods
    async with _source(mcp_http.url) as source:
        first = await source.list_tools()
        assert await source.list_tools() == first
        assert await source.list_tools() == first
        assert listings["tools/list"] == 1

        await source.list_tools(refresh=True)
        assert listings["tools/list"] == 2

        with pytest.raises(ToolError):
            await source.call("fail", {})
        await source.list_tools()
        assert listings["tools/list"] == 3
        await source.list_tools()
        assert listings["tools/list"] == 3


async def test_tool_list_expires_after_refresh_seconds(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url, refresh_seconds=0) as source:
        await source.list_tools()
        await source.list_tools()
    assert mcp_http.recorder.methods["tools/list"] == 2


async def test_concurrent_listings_ask_the_server_once(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url) as source:
        listed = await asyncio.gather(*(source.list_tools() for _ in range(5)))
    assert all(tools == listed[0] for tools in listed)
    assert mcp_http.recorder.methods["tools/list"] == 1


async def test_reconnects_after_the_server_went_away() -> None:
    server = McpHttpServer()
    async with server.running() as url:
        source = _source(url)
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
        await source.list_tools()
    try:
        # the server is down: one reconnect is tried, then the call fails
        with pytest.raises(ToolError, match="could not be reached"):
            await source.call("add", {"a": 1, "b": 2})
        with pytest.raises(ToolError, match="could not be reached"):
            await source.list_tools()
        async with server.running():
            assert await source.call("add", {"a": 5, "b": 5}) == "10"
            listed_before = server.recorder.methods["tools/list"]
            # the failures made the cached listing stale
            await source.list_tools()
            assert server.recorder.methods["tools/list"] == listed_before + 1
        # restarted again between two calls: the next call still succeeds
        async with server.running():
            assert await source.call("echo", {"text": "back"}) == "back"
    finally:
        await source.aclose()
    assert server.recorder.calls["add"] == 2


async def test_reconnects_when_a_restarted_server_forgot_the_session() -> None:
    # a 2025-era server keeps sessions; after a restart it rejects the old id
    server = McpHttpServer(legacy=True)
    async with server.running() as url:
        source = _source(url)
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
    try:
        async with server.running():
            assert await source.call("add", {"a": 2, "b": 2}) == "4"
    finally:
        await source.aclose()
    assert server.recorder.methods["initialize"] == 2
    assert server.recorder.calls["add"] == 2


async def test_env_headers_reach_the_server_and_never_come_back(
    mcp_http: McpHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_TEST_TOKEN", "tok-12345678")
    headers = {"Authorization": "env:MCP_TEST_TOKEN", "X-Team": "blue"}
    async with _source(mcp_http.url, headers=headers) as source:
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
        # a tool that echoes the credential gets it masked
        assert await source.call("echo", {"text": "token tok-12345678"}) == "token ***"
    seen = mcp_http.recorder.headers
    assert seen
    assert all(h["authorization"] == "tok-12345678" and h["x-team"] == "blue" for h in seen)


async def test_a_missing_env_header_fails_the_call_before_connecting(
    mcp_http: McpHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_TEST_MISSING", raising=False)
    async with _source(mcp_http.url, headers={"Authorization": "env:MCP_TEST_MISSING"}) as source:
        with pytest.raises(ToolError, match="MCP_TEST_MISSING is not set"):
            await source.call("add", {"a": 1, "b": 2})
    assert not mcp_http.recorder.methods


async def test_server_tools_run_through_the_source(mcp_http: McpHttpServer) -> None:
    async with _source(mcp_http.url, allowed_tools=["add", "echo"]) as source:
        tools = source.server_tools(await source.list_tools())
        assert [(t.name, t.label, t.display_name) for t in tools] == [
            ("calc__add", "calc", "add"),
            ("calc__echo", "calc", "echo"),
        ]
        add = tools[0]
        assert add.run is not None
        arguments = add.parse_arguments('{"a": 20, "b": 22}')
        async with httpx.AsyncClient() as http:
            output = await add.run(arguments, ToolCallContext(step_id="step_1", http=http))
        assert output == "42"
        with pytest.raises(ToolError, match="do not match its schema"):
            add.parse_arguments('{"a": "twenty"}')
    assert mcp_http.recorder.calls["add"] == 1


def _source_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task.get_name().startswith("mcp source")}


async def test_aclose_ends_every_task_and_refuses_later_calls() -> None:
    before = asyncio.all_tasks()
    server = McpHttpServer()
    async with server.running() as url:
        source = _source(url)
        assert await source.call("add", {"a": 1, "b": 2}) == "3"
        assert _source_tasks()  # the connection's owner task
        await source.aclose()
        assert not _source_tasks()
        with pytest.raises(ToolError, match="closed"):
            await source.call("add", {"a": 1, "b": 2})
        await source.aclose()  # closing twice is harmless
    # nothing the client started outlives it (the server's tasks end with it)
    assert asyncio.all_tasks() - before == set()
