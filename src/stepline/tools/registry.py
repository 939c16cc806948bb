"""Which server tools exist, which a model or agent gets, and how their calls are checked.

Server tools come from the config only: nothing in a request can add one or
name a URL for the server to call. A tool's arguments are parsed and checked
against its JSON schema before it runs; a bad call becomes a
:class:`~stepline.errors.ToolError`, which the loop gives back to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from stepline.config import AgentToolConfig, HttpToolConfig, ToolConfig
from stepline.errors import ConfigError, ToolError

__all__ = ["ServerTool", "ToolRegistry"]


@dataclass(frozen=True, kw_only=True)
class ServerTool:
    """One configured tool with its compiled argument validator."""

    name: str
    config: HttpToolConfig | AgentToolConfig
    validator: Draft202012Validator = field(compare=False, repr=False)

    def chat_definition(self) -> dict[str, Any]:
        """The tool as a Chat Completions function tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.config.description,
                "parameters": self.config.parameters,
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


class ToolRegistry:
    """The configured server tools, by name."""

    def __init__(self, tools: Mapping[str, ToolConfig]) -> None:
        self._tools: dict[str, ServerTool] = {}
        for name, config in tools.items():
            try:
                Draft202012Validator.check_schema(config.parameters)
            except SchemaError as exc:
                raise ConfigError(
                    f"tool {name!r} has an invalid parameters schema: {exc.message}"
                ) from None
            self._tools[name] = ServerTool(
                name=name, config=config, validator=Draft202012Validator(config.parameters)
            )

    def get(self, name: str) -> ServerTool | None:
        return self._tools.get(name)

    def select(self, names: Iterable[str]) -> dict[str, ServerTool]:
        """The named tools (names were checked against the config at load)."""
        return {name: self._tools[name] for name in names}
