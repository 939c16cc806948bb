"""Model routing as the engine sees it: a client's model name -> the upstream that serves it.

The engine never reads the config's routes. The server hands it
:class:`ModelRoutes` over its settings (``server.model_routes``); the
library hands it the models of an ``Agent`` tree. Both answer the same three
questions, and the route that accepts a request asks the same object as the
loop that runs it, so they never disagree about a model.
"""

from __future__ import annotations

from typing import Protocol

from stepline._upstream.routing import UpstreamTarget

__all__ = ["ModelRoutes"]


class ModelRoutes(Protocol):
    def target(self, model: str) -> UpstreamTarget | None:
        """The upstream serving ``model``; None when nothing does."""
        ...

    def tools(self, model: str) -> tuple[str, ...]:
        """The server tools (and MCP sources) ``model``'s route offers."""
        ...

    def context_window(self, model: str, target: UpstreamTarget) -> int | None:
        """The context window truncation fits ``model``'s requests in; None: unknown."""
        ...
