"""MCP servers as sources of server-side tools.

An :class:`McpSource` connects to one MCP server (Streamable HTTP ``url`` or
a stdio ``command``), lists its tools and runs their calls. Each MCP tool
becomes a :class:`~stepline._tools.registry.ServerTool` named
``<label>__<tool>``, whose ``mcp_call`` items show ``label`` as the
``server_label`` and the MCP tool's own name.

Invariants:

* One connection per source, opened on first use and shared by concurrent
  calls. The MCP client is entered and exited by one owner task (anyio
  cancel scopes must be left by the task that entered them); callers only
  send requests over the connected session.
* A call that fails because the connection is gone (server restarted, stdio
  process died) reconnects once and is sent once more; anything else
  becomes a :class:`~stepline.errors.ToolError` at once. A timeout is never
  retried: the server may still be running the tool.
* The tool list is cached for ``refresh_seconds``; any failure marks it
  stale, so the next listing asks the server again.
* Only tools on the allow-list are listed, turned into server tools or
  called; header and ``env`` values read from the environment (``env:NAME``)
  are masked in every output and error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import httpx2
import orjson
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation, TextContent

from stepline._config import McpSourceConfig, resolve_secret
from stepline._tools.http import mask_secrets
from stepline._tools.registry import ServerTool, ToolCallContext, ToolRun
from stepline._version import __version__
from stepline.errors import ConfigError, ToolError

__all__ = ["McpSource", "McpSourceConfig", "McpToolInfo"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_NAME_HASH_CHARS = 8
#: pages of ``tools/list`` followed before a listing is taken as complete
_MAX_LIST_PAGES = 100
#: the read timeout of the HTTP client; a response stream may stay open this long
_HTTP_READ_TIMEOUT = 300.0
_HTTP_CONNECT_TIMEOUT = 30.0
#: how servers (and the SDK's transport, after an HTTP 404) say a session id is no longer known
_SESSION_LOST = re.compile(
    r"session\b.*\b(not found|terminated|expired|unknown)|\b(unknown|invalid|expired) session",
    re.IGNORECASE,
)


def _empty_parameters() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True, kw_only=True)
class McpToolInfo:
    """One tool an MCP server lists: its own name, description and argument schema."""

    name: str
    description: str
    input_schema: dict[str, Any]


class _Unreachable(Exception):
    """The connection could not be opened, or closed before it was used; the message says why."""


class _Connection:
    """One connected MCP client and the task that owns it.

    The owner task enters the client, publishes it, and waits until it is
    asked to close, then exits the client itself. When the transport fails,
    its task group cancels the owner, which records the error and ends; the
    connection is then unusable and the source opens a new one.
    """

    def __init__(self, open_client: Callable[[], AbstractAsyncContextManager[Client]], name: str):
        self._ready = asyncio.Event()
        self._close = asyncio.Event()
        self._client: Client | None = None
        self._error: Exception | None = None
        self._broken = False
        self.task = asyncio.create_task(self._own(open_client), name=name)
        self.task.add_done_callback(self._ended)

    async def _own(self, open_client: Callable[[], AbstractAsyncContextManager[Client]]) -> None:
        try:
            async with open_client() as client:
                self._client = client
                self._ready.set()
                await self._close.wait()
        except Exception as exc:  # the transport failed; callers see it through client()
            self._error = exc
            logger.info("MCP connection %s ended: %s", self.task.get_name(), _describe(exc))
        finally:
            self._client = None

    def _ended(self, task: asyncio.Task[None]) -> None:
        # A done callback, not a finally: it also runs for a task cancelled
        # before it started, so no caller waits forever on ``_ready``.
        self._broken = True
        self._ready.set()
        if not task.cancelled():
            task.exception()  # retrieved: the owner already recorded its own failure

    @property
    def usable(self) -> bool:
        return not self._broken and not self.task.done()

    async def client(self) -> Client:
        """The connected client, once the handshake is done; ``_Unreachable`` if it failed."""
        await self._ready.wait()
        if self._client is None or self._broken:
            raise _Unreachable(_describe(self._error) if self._error else "connection closed")
        return self._client

    @property
    def connecting(self) -> bool:
        return not self._ready.is_set()

    def close(self) -> None:
        """Ask the owner task to exit the client; ``task`` ends once it has.

        A connection still in its handshake is cancelled instead: a server
        that never answers must not hold up the source (or its ``aclose``).
        """
        self._broken = True
        if self.connecting:
            self.task.cancel()
        self._close.set()


def _child_stderr() -> TextIO:
    """Where a stdio server's stderr goes: ours, or the process's own when ours
    was replaced by something without a file descriptor (a child needs one)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr


def _describe(exc: BaseException) -> str:
    """The innermost cause of a (possibly grouped) transport error, in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    if isinstance(exc, _Unreachable):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _session_gone(exc: Exception, connection: _Connection) -> bool:
    """Whether ``exc`` means the connection is gone (worth one reconnect)."""
    if isinstance(exc, _Unreachable):
        return True
    if isinstance(exc, MCPError):
        # A rejected session id means the request never ran, so sending it
        # again on a new session is safe; a false match costs one reconnect.
        return exc.code == CONNECTION_CLOSED or bool(_SESSION_LOST.search(exc.message))
    return not connection.usable


def _server_tool_name(label: str, tool: str) -> str:
    """``<label>__<tool>``, made a valid function name; a name that had to be
    changed gets a hash of the original, so two tools never end up the same."""
    raw = f"{label}__{tool}"
    if _TOOL_NAME.match(raw):
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:_NAME_HASH_CHARS]
    cleaned = _INVALID_NAME_CHARS.sub("_", raw)[: 64 - _NAME_HASH_CHARS - 1]
    return f"{cleaned}_{digest}"


def _tool_output(result: CallToolResult) -> tuple[str, bool]:
    """The text the model sees, and whether the server flagged it as an error.

    Text parts win; without them the structured content is the output (as
    JSON), and without either each other part is named by its type.
    """
    texts = [part.text for part in result.content if isinstance(part, TextContent)]
    if texts:
        return "\n".join(texts), result.is_error
    if result.structured_content is not None:
        return orjson.dumps(result.structured_content).decode(), result.is_error
    return "\n".join(f"[{part.type} content]" for part in result.content), result.is_error


class McpSource:
    """The tools of one MCP server, listed, cached and called over one shared connection."""

    def __init__(self, label: str, config: McpSourceConfig) -> None:
        self.label = label
        self.config = config
        self._connection: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._tools: list[McpToolInfo] | None = None
        self._listed_at = 0.0
        self._stale = True
        self._listing = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> McpSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- tools -------------------------------------------------------------

    async def list_tools(self, *, refresh: bool = False) -> list[McpToolInfo]:
        """The server's tools on the allow-list, from the cache while it is fresh."""
        if refresh or not self._fresh():
            async with self._listing:
                # a listing that finished while this one waited is fresh enough
                if refresh or not self._fresh():
                    self._tools = await self._with_session(self._fetch_tools, tool=self.label)
                    self._listed_at = time.monotonic()
                    self._stale = False
        assert self._tools is not None
        return [tool for tool in self._tools if self._allowed(tool.name)]

    def _fresh(self) -> bool:
        return (
            self._tools is not None
            and not self._stale
            and time.monotonic() - self._listed_at < self.config.refresh_seconds
        )

    async def _fetch_tools(self, client: Client) -> list[McpToolInfo]:
        tools: list[McpToolInfo] = []
        cursor: str | None = None
        for _ in range(_MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(
                McpToolInfo(
                    name=tool.name,
                    description=tool.description or "",
                    input_schema=dict(tool.input_schema) or _empty_parameters(),
                )
                for tool in page.tools
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _allowed(self, name: str) -> bool:
        return self.config.allowed_tools is None or name in self.config.allowed_tools

    def tool_name(self, mcp_name: str) -> str:
        """The server tool name of one of this source's MCP tools."""
        return _server_tool_name(self.label, mcp_name)

    def server_tools(self, tools: list[McpToolInfo]) -> list[ServerTool]:
        """One server tool per listed MCP tool on the allow-list.

        A tool whose schema is not a valid JSON schema is left out (and
        logged): the server is not the operator's to fix, and its other
        tools still work.
        """
        built: list[ServerTool] = []
        for tool in tools:
            if not self._allowed(tool.name):
                continue
            try:
                built.append(
                    ServerTool.build(
                        self.tool_name(tool.name),
                        description=tool.description,
                        parameters=tool.input_schema or _empty_parameters(),
                        run=self._runner(tool.name),
                        label=self.label,
                        display_name=tool.name,
                    )
                )
            except ConfigError as exc:
                logger.warning("MCP source %r: tool %r left out: %s", self.label, tool.name, exc)
        return built

    def _runner(self, mcp_name: str) -> ToolRun:
        async def run(arguments: dict[str, Any], context: ToolCallContext) -> str:
            return await self.call(mcp_name, arguments)

        return run

    def needs_approval(self, tool_name: str) -> bool:
        """Whether a call of ``tool_name`` (its MCP name or server tool name) waits for approval."""
        policy = self.config.require_approval
        if policy == "never":
            return False
        if policy == "always":
            return True
        return tool_name in policy or any(self.tool_name(name) == tool_name for name in policy)

    # -- calls -------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run the MCP tool ``name``; its output text, or a ToolError the model can read."""
        tool = self.tool_name(name)
        if not self._allowed(name):
            raise ToolError(f"MCP server {self.label!r} has no allowed tool {name!r}", tool=tool)

        async def send(client: Client) -> CallToolResult:
            return await client.call_tool(name, arguments)

        result = await self._with_session(send, tool=tool)
        output, is_error = _tool_output(result)
        output = mask_secrets(output, self.config.secret_values())
        if is_error:
            self._stale = True  # an unknown or changed tool answers like this
            raise ToolError(output or f"MCP tool {name!r} failed", tool=tool)
        return output

    async def _with_session(self, request: Callable[[Client], Awaitable[_T]], *, tool: str) -> _T:
        """Send ``request`` over the shared session within the timeout (connecting
        and one reconnect included)."""
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._send(request, tool)
        except TimeoutError:
            self._stale = True
            connection = self._connection
            if connection is not None and connection.connecting:
                self._drop(connection)  # the next call starts a new handshake
            raise ToolError(
                f"MCP server {self.label!r} did not answer within the timeout of "
                f"{timeout:g}s ({tool})",
                tool=tool,
            ) from None

    async def _send(self, request: Callable[[Client], Awaitable[_T]], tool: str) -> _T:
        """Send ``request``; if the session turns out to be gone, once more on a new one."""
        for attempt in range(2):
            connection = self._open_connection(tool)
            try:
                return await request(await connection.client())
            except Exception as exc:
                self._stale = True
                if not _session_gone(exc, connection):
                    raise ToolError(self._failure(exc), tool=tool) from None
                self._drop(connection)
                if attempt == 1:
                    detail = mask_secrets(_describe(exc), self.config.secret_values())
                    raise ToolError(
                        f"MCP server {self.label!r} could not be reached: {detail}", tool=tool
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, exc: Exception) -> str:
        if isinstance(exc, MCPError):
            text = f"MCP server {self.label!r} refused the request: {exc.message}"
        else:
            text = f"MCP server {self.label!r} failed: {_describe(exc)}"
        return mask_secrets(text, self.config.secret_values())

    # -- connections -------------------------------------------------------

    def _open_connection(self, tool: str) -> _Connection:
        """The shared connection, opened (in its owner task) if there is none or it died."""
        if self._closed:
            raise ToolError(f"MCP source {self.label!r} is closed", tool=tool)
        connection = self._connection
        if connection is None or not connection.usable:
            if connection is not None:
                self._drop(connection)
            connection = _Connection(self._client, name=f"mcp source {self.label}")
            self._connections.add(connection)
            connection.task.add_done_callback(lambda _: self._connections.discard(connection))
            self._connection = connection
        return connection

    def _drop(self, connection: _Connection) -> None:
        """Stop using ``connection``; its owner task exits the client on its own."""
        if self._connection is connection:
            self._connection = None
        connection.close()

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[Client]:
        info = Implementation(name="stepline", version=__version__)
        if self.config.url is not None:
            headers = {name: resolve_secret(value) for name, value in self.config.headers.items()}
            timeout = httpx2.Timeout(
                _HTTP_CONNECT_TIMEOUT, read=max(_HTTP_READ_TIMEOUT, self.config.timeout)
            )
            async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
                transport = streamable_http_client(self.config.url, http_client=http)
                # the source caches the tool list itself, with its own lifetime
                async with Client(transport, cache=None, client_info=info) as client:
                    yield client
        else:
            assert self.config.command is not None
            env = {name: resolve_secret(value) for name, value in self.config.env.items()}
            server = StdioServerParameters(
                command=self.config.command, args=self.config.args, env=env or None
            )
            transport = stdio_client(server, errlog=_child_stderr())
            async with Client(transport, cache=None, client_info=info) as client:
                yield client

    async def aclose(self) -> None:
        """Close the connection and wait for every owner task (and stdio process) to end."""
        self._closed = True
        self._connection = None
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.task for connection in connections])
