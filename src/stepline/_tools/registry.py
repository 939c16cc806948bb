"""Which server tools exist, which a model or agent gets, and how their calls are checked.

Every server tool is a :class:`ServerTool`: a name, a description, a JSON
schema, and either a ``run`` coroutine (HTTP tools, Python functions, MCP
tools) or an :class:`AgentSpec` (a sub-agent, which the loop runs as a nested
loop). Server tools come from the config, from Python modules the operator
loads, or from the library: nothing in a request can add one or name a URL
for the server to call.

A tool's arguments are parsed and checked against its JSON schema before it
runs; a bad call becomes a :class:`~stepline.errors.ToolError`, which the
loop gives back to the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from stepline._config import AgentToolConfig, HttpToolConfig, ToolConfig
from stepline._tools.http import call_http_tool
from stepline._transport import HttpxTransport, Transport
from stepline.errors import ConfigError, ToolError

__all__ = [
    "SERVER_LABEL",
    "AgentSpec",
    "ServerTool",
    "ToolCallContext",
    "ToolRegistry",
    "ToolRun",
    "configured_tool",
]


#: ``server_label`` of the items that show the tools the server runs itself
SERVER_LABEL = "stepline"


@dataclass(frozen=True, kw_only=True)
class ToolCallContext:
    """What a running tool may use: its step id (for idempotency), the shared client, and
    the headers its requests pass on (the step's trace context, when tracing is on)."""

    step_id: str
    http: httpx.AsyncClient
    headers: Mapping[str, str] = field(default_factory=dict)


#: runs one call: (validated arguments, context) -> the output the model sees
ToolRun = Callable[[dict[str, Any], ToolCallContext], Awaitable[str]]


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    """A sub-agent: a model (routed like any model name), instructions and tools."""

    model: str
    instructions: str | None = None
    tools: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ServerTool:
    """One tool the server runs, with its compiled argument validator."""

    name: str
    description: str
    parameters: dict[str, Any]
    validator: Draft202012Validator = field(compare=False, repr=False)
    run: ToolRun | None = field(default=None, compare=False, repr=False)
    agent: AgentSpec | None = None
    #: ``server_label`` of the tool's ``mcp_call`` items
    label: str = SERVER_LABEL
    #: the name its ``mcp_call`` items show (an MCP tool's own name); default ``name``
    display_name: str | None = None
    #: calls wait for the client's approval (``mcp_approval_request``) before running
    approval: bool = False
    #: the tool cuts its own output (HTTP tools, to their own limit); others are cut
    #: to ``limits.max_tool_output_chars``
    limits_output: bool = False
    #: the hosted tool type it plays in this response (``web_search``...): its calls
    #: then show as that tool's items; None: as ``mcp_call`` items
    hosted: str | None = None

    @classmethod
    def build(
        cls,
        name: str,
        *,
        description: str,
        parameters: dict[str, Any],
        run: ToolRun | None = None,
        agent: AgentSpec | None = None,
        label: str = SERVER_LABEL,
        display_name: str | None = None,
        approval: bool = False,
    ) -> ServerTool:
        """A tool with its schema checked; exactly one of ``run`` and ``agent``."""
        if (run is None) == (agent is None):
            raise ConfigError(f"tool {name!r} needs exactly one of run and agent")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise ConfigError(
                f"tool {name!r} has an invalid parameters schema: {exc.message}"
            ) from None
        return cls(
            name=name,
            description=description,
            parameters=parameters,
            validator=Draft202012Validator(parameters),
            run=run,
            agent=agent,
            label=label,
            display_name=display_name,
            approval=approval,
        )

    def chat_definition(self) -> dict[str, Any]:
        """The tool as a Chat Completions function tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def parse_arguments(self, raw: str) -> dict[str, Any]:
        """The model's arguments as a dict, or a ToolError the model can act on."""
        try:
            arguments = orjson.loads(raw or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolError(
                f"arguments for tool {self.name!r} are not valid JSON ({exc}): {raw[:200]}",
                tool=self.name,
            ) from None
        if not isinstance(arguments, dict):
            raise ToolError(
                f"arguments for tool {self.name!r} must be a JSON object", tool=self.name
            )
        error = next(iter(self.validator.iter_errors(arguments)), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "arguments"
            raise ToolError(
                f"arguments for tool {self.name!r} do not match its schema at {where}: "
                f"{error.message}",
                tool=self.name,
            )
        return arguments


def _http_run(name: str, config: HttpToolConfig, transport: Transport | None) -> ToolRun:
    async def run(arguments: dict[str, Any], context: ToolCallContext) -> str:
        return await call_http_tool(
            transport or HttpxTransport(client=context.http),
            name,
            config,
            arguments,
            step_id=context.step_id,
            headers=context.headers,
        )

    return run


def configured_tool(
    name: str, config: ToolConfig, *, transport: Transport | None = None
) -> ServerTool:
    """The server tool a config entry describes (HTTP tool or sub-agent). An HTTP tool
    sends through ``transport``, or (None) through the call context's httpx client."""
    if isinstance(config, AgentToolConfig):
        spec = AgentSpec(model=config.model, instructions=config.instructions, tools=config.tools)
        return ServerTool.build(
            name, description=config.description, parameters=config.parameters, agent=spec
        )
    return dataclasses.replace(
        ServerTool.build(
            name,
            description=config.description,
            parameters=config.parameters,
            run=_http_run(name, config, transport),
        ),
        limits_output=True,
    )


class ToolRegistry:
    """The server tools, by name: the configured ones and any added later. The
    configured HTTP tools send through ``transport`` (the server passes its
    network transport; None: each call's httpx client)."""

    def __init__(
        self, tools: Mapping[str, ToolConfig] | None = None, *, transport: Transport | None = None
    ) -> None:
        self._tools: dict[str, ServerTool] = {
            name: configured_tool(name, config, transport=transport)
            for name, config in (tools or {}).items()
        }

    def add(self, tool: ServerTool) -> None:
        if tool.name in self._tools:
            raise ConfigError(f"two server tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def get(self, name: str) -> ServerTool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def select(self, names: Iterable[str]) -> dict[str, ServerTool]:
        """The named tools; a name the registry does not hold is a ConfigError."""
        try:
            return {name: self._tools[name] for name in names}
        except KeyError as exc:
            raise ConfigError(f"no server tool named {exc.args[0]!r}") from None
