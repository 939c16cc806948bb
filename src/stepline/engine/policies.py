"""The limits one loop runs under, fixed when the loop starts.

A :class:`LoopPolicy` is built from the request and the config and handed
to the pure transition; nothing in it changes while a response runs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoopPolicy"]


@dataclass(frozen=True, kw_only=True)
class LoopPolicy:
    """Caps and the split between tools the server runs and tools the client runs."""

    #: model calls one scope may make before the response ends ``incomplete``
    max_iterations: int = 10
    #: tool calls the server may run for the response (the request's ``max_tool_calls``)
    max_tool_calls: int | None = None
    #: a failed tool step fails the response instead of going back to the model
    fail_on_tool_error: bool = False
    #: tool names whose calls go back to the client as ``function_call`` items
    client_tools: frozenset[str] = frozenset()
