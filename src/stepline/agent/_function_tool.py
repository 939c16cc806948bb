"""Plain Python functions as tools: ``@tool`` derives the schema and checks every call.

The JSON schema comes from the function's type hints (through pydantic), its
description from the docstring's first paragraph, and each parameter's
description from the docstring's ``Args:`` section (Google style) or
``:param name:`` lines. The model's arguments are validated against that
model before the function runs; a refusal, or an exception the function
raises, becomes a :class:`~stepline.errors.ToolError` that goes back to the
model like any tool error. Synchronous functions run in a worker thread, so
they never block the loop.

A decorated function stays callable as before.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from typing import Any, get_type_hints, overload

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from stepline._tools.registry import ServerTool, ToolCallContext
from stepline.errors import ToolError

__all__ = ["FunctionTool", "tool"]

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_GOOGLE_ARG = re.compile(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")
_SPHINX_ARG = re.compile(r"^\s*:param\s+(?:\w+\s+)?(\w+):\s*(.+)$")


def _describe(doc: str | None) -> tuple[str, dict[str, str]]:
    """The docstring's summary paragraph, and a description per parameter."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _ARGS_HEADER.match(line) or _SPHINX_ARG.match(line):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        sphinx = _SPHINX_ARG.match(line)
        if sphinx:
            params[sphinx.group(1)] = sphinx.group(2).strip()
            continue
        if in_args:
            google = _GOOGLE_ARG.match(line)
            if google:
                params[google.group(1)] = google.group(2).strip()
            elif line.strip() and not line.startswith((" ", "\t")):
                in_args = False
    return " ".join(summary), params


def _render(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return orjson.dumps(result, default=str).decode()


class FunctionTool:
    """A Python function the loop can call as a tool, with its derived schema."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        summary, params = _describe(function.__doc__)
        self.description = description if description is not None else summary
        hints = get_type_hints(function)
        fields: dict[str, Any] = {}
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args and **kwargs cannot be described")
            annotation = hints.get(parameter.name, Any)
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[parameter.name] = (
                annotation,
                Field(default, description=params.get(parameter.name)),
            )
        self._arguments: type[BaseModel] = create_model(
            f"{self.name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        schema = self._arguments.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        self.parameters: dict[str, Any] = schema

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Validate ``arguments``, call the function, render its result as text."""
        try:
            validated = self._arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ToolError(
                f"arguments for tool {self.name!r} are invalid: {problems}", tool=self.name
            ) from None
        kwargs = {field: getattr(validated, field) for field in type(validated).model_fields}
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(**kwargs)
            else:
                result = await asyncio.to_thread(self.function, **kwargs)
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(
                f"tool {self.name!r} raised {type(exc).__name__}: {exc}", tool=self.name
            ) from exc
        return _render(result)

    def server_tool(self) -> ServerTool:
        """This function as a tool the loop runs (in a library run or a server)."""

        async def run(arguments: dict[str, Any], context: ToolCallContext) -> str:
            return await self.invoke(arguments)

        return ServerTool.build(
            self.name, description=self.description, parameters=self.parameters, run=run
        )

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"


@overload
def tool(function: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a function a tool: ``@tool`` or ``@tool(name=..., description=...)``."""
    if function is not None:
        return FunctionTool(function, name=name, description=description)

    def decorate(inner: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(inner, name=name, description=description)

    return decorate
