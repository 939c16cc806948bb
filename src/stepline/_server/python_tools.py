"""``stepline serve --tools MODULE``: Python functions as server tools.

A module (``package.module``, or a path to a ``.py`` file) offers its
``@tool`` functions (:class:`~stepline.agent.FunctionTool`): the ones listed
in its ``TOOLS``, or else every one it defines at module level. They join
the configured server tools and are offered to every model, beside the
model's own server tools.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from stepline._tools.registry import ServerTool
from stepline.agent._function_tool import FunctionTool
from stepline.errors import ConfigError

__all__ = ["load_python_tools"]


def _module(spec: str) -> object:
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec).resolve()
        found = importlib.util.spec_from_file_location(f"stepline_tools_{path.stem}", path)
        if found is None or found.loader is None or not path.exists():
            raise ConfigError(f"cannot load tools from {spec}: no such Python file")
        module = importlib.util.module_from_spec(found)
        sys.modules[found.name] = module
        found.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ConfigError(f"cannot load tools from module {spec!r}: {exc}") from None


def load_python_tools(specs: list[str]) -> list[ServerTool]:
    """The server tools the named modules offer, in order; ConfigError if one offers none."""
    tools: list[ServerTool] = []
    for spec in specs:
        module = _module(spec)
        listed = getattr(module, "TOOLS", None)
        candidates = listed if listed is not None else list(vars(module).values())
        found = [item for item in candidates if isinstance(item, FunctionTool)]
        if not found:
            raise ConfigError(f"{spec} offers no @tool functions")
        tools.extend(function.server_tool() for function in found)
    return tools
