"""The caps and loop behaviour a process's runs share: the engine's only view of the config.

The engine reads no config file. Whoever builds an :class:`~stepline._engine.loop.Engine`
(the server from its settings, the library from an ``Agent``'s arguments)
hands it one :class:`Limits`; what the config says beyond these (leases,
body sizes, keys) is the server's business, not the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Limits", "Strictness"]

#: how strictly a transcript is checked before each model call
Strictness = Literal["strict", "lenient", "off"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What bounds a run and what a failing tool does to it."""

    #: model calls one scope may make before the response ends ``incomplete``
    max_iterations: int = 10
    #: how deep sub-agents nest
    max_depth: int = 8
    #: tool calls of one fan-out that run at once
    tool_concurrency: int = 8
    #: ``model``: a tool error becomes the tool's result; ``fail``: it fails the response
    tool_errors: Literal["model", "fail"] = "model"
    #: ``all``: a fan-out runs to the end; ``fail_fast``: the first failed call
    #: cancels its running siblings
    tool_join: Literal["all", "fail_fast"] = "all"
    #: how strictly a transcript is checked before each model call
    validation: Strictness = "lenient"
    #: a server tool's output longer than this reaches the model truncated
    max_tool_output_chars: int = 100_000
    #: the server's lease: a tool call recorded started that waited longer than this
    #: to run (the process stalled) is started again in the store first, which refuses
    #: a step another process ran to its end meanwhile; None: no leases (the library)
    lease_seconds: float | None = None
