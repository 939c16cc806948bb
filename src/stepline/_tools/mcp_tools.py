"""The MCP servers a process uses: configured sources by label, and request-level ones.

A model route names a configured source by its label among its tools; a
request may bring its own MCP server (``{"type": "mcp", ...}``), accepted
only when its ``server_url`` is on the config's allow-list. Request-level
sources are pooled by label, URL and headers, so their sessions are reused
across responses; the pool is bounded and closes what it evicts.

Each source's tools become server tools named ``<label>__<tool>``, shown in
items under the tool's own name and the source's label, and held for
approval where the source (or the request) says so. A source that cannot be
listed offers no tools, and its listing says why.

A request-level server is read through the shape declared here
(:class:`RequestMcpServer`), which the wire's ``McpTool`` has: the tools
name no wire type.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from stepline._config import McpSourceConfig
from stepline._tools.registry import ServerTool
from stepline.errors import InvalidRequest, ToolError

if TYPE_CHECKING:
    # the MCP SDK is imported only once an MCP server is used (it is a large import)
    from stepline._tools.mcp import McpSource

__all__ = ["McpListing", "McpTools", "RequestMcpServer", "RequestTools", "url_allowed"]

logger = logging.getLogger(__name__)

_POOL_SIZE = 64


@runtime_checkable
class RequestMcpServer(Protocol):
    """An MCP server a request brings (``{"type": "mcp", ...}``), as the tools read it."""

    @property
    def server_label(self) -> str: ...

    @property
    def server_url(self) -> str: ...

    @property
    def headers(self) -> dict[str, str] | None: ...

    def allowed_names(self) -> list[str] | None:
        """The server's tools the request lets the model call; None: all."""
        ...

    def needs_approval(self, tool_name: str) -> bool:
        """Whether a call of ``tool_name`` waits for the client's approval."""
        ...


class RequestTools(Protocol):
    """The tools a request declares, in order; some may be MCP servers."""

    @property
    def tools(self) -> Sequence[object]: ...


def url_allowed(url: str, allowed: Sequence[str]) -> bool:
    """An exact entry, or a prefix entry ending in ``*``."""
    return any(
        url == entry or (entry.endswith("*") and url.startswith(entry[:-1])) for entry in allowed
    )


@dataclass(frozen=True, kw_only=True)
class McpListing:
    """One source's tools for a response, or the error that kept them away."""

    label: str
    tools: dict[str, ServerTool]
    error: str | None = None


def _source(label: str, config: McpSourceConfig) -> McpSource:
    from stepline._tools.mcp import McpSource

    return McpSource(label, config)


class McpTools:
    """Configured MCP sources, and a pool of request-level ones."""

    def __init__(
        self, configured: Mapping[str, McpSourceConfig], allowed_urls: Sequence[str] = ()
    ) -> None:
        self._configured = {label: _source(label, config) for label, config in configured.items()}
        self._allowed_urls = tuple(allowed_urls)
        self._pool: OrderedDict[tuple[object, ...], McpSource] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def is_source(self, name: str) -> bool:
        return name in self._configured

    def check_request(self, request: RequestTools) -> None:
        """Refuse request-level MCP servers off the allow-list, or reusing a source's label."""
        for index, tool in enumerate(request.tools):
            if getattr(tool, "type", None) != "mcp" or not isinstance(tool, RequestMcpServer):
                continue
            if not url_allowed(tool.server_url, self._allowed_urls):
                raise InvalidRequest(
                    f"MCP server URL {tool.server_url!r} is not allowed on this server",
                    param=f"tools[{index}].server_url",
                )
            if tool.server_label in self._configured:
                raise InvalidRequest(
                    f"server_label {tool.server_label!r} is taken by a configured MCP server",
                    param=f"tools[{index}].server_label",
                )

    async def listings(
        self, labels: Sequence[str], request_tools: Sequence[RequestMcpServer]
    ) -> list[McpListing]:
        """The tools of the named configured sources and of the request's servers."""
        sources = [self._configured[label] for label in labels]
        found = [await self._list(source, source.needs_approval) for source in sources]
        for tool in request_tools:
            found.append(await self._list(self._pooled(tool), tool.needs_approval))
        return found

    async def _list(self, source: McpSource, approval: Callable[[str], bool]) -> McpListing:
        try:
            infos = await source.list_tools()
        except ToolError as exc:
            logger.warning("listing MCP server %s failed: %s", source.label, exc.message)
            return McpListing(label=source.label, tools={}, error=exc.message)
        tools = {
            server_tool.name: dataclasses.replace(
                server_tool, approval=bool(approval(server_tool.display_name or server_tool.name))
            )
            for server_tool in source.server_tools(infos)
        }
        return McpListing(label=source.label, tools=tools)

    def _pooled(self, tool: RequestMcpServer) -> McpSource:
        key = (
            tool.server_label,
            tool.server_url,
            tuple(sorted((tool.headers or {}).items())),
            tuple(tool.allowed_names() or ()),
        )
        source = self._pool.get(key)
        if source is None:
            config = McpSourceConfig(
                url=tool.server_url, headers=tool.headers or {}, allowed_tools=tool.allowed_names()
            )
            source = self._pool[key] = _source(tool.server_label, config)
            while len(self._pool) > _POOL_SIZE:
                _, evicted = self._pool.popitem(last=False)
                closing = asyncio.get_running_loop().create_task(evicted.aclose())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        self._pool.move_to_end(key)
        return source

    async def aclose(self) -> None:
        for source in [*self._configured.values(), *self._pool.values()]:
            await source.aclose()
        self._pool.clear()
        if self._closing:
            await asyncio.wait(self._closing)
