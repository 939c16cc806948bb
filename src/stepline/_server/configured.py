"""The config file as the engine takes it: its :class:`Limits` and its model routes.

The engine reads no config (``engine.limits``, ``engine.routes``); the
server translates its settings here, once, when it builds its engine.
"""

from __future__ import annotations

from stepline._config import Settings
from stepline._engine.limits import Limits
from stepline._upstream.routing import UpstreamTarget, resolve_target

__all__ = ["ConfiguredRoutes", "engine_limits"]


def engine_limits(settings: Settings) -> Limits:
    """The caps of ``[limits]`` that bound a run (the rest are the server's)."""
    limits = settings.limits
    return Limits(
        max_iterations=limits.max_iterations,
        max_depth=limits.max_depth,
        tool_concurrency=limits.tool_concurrency,
        tool_errors=limits.tool_errors,
        tool_join=limits.tool_join,
        validation=limits.validation,
        max_tool_output_chars=limits.max_tool_output_chars,
        lease_seconds=limits.lease_seconds,
    )


class ConfiguredRoutes:
    """Routes read from the settings: each model's route, else the catch-all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def target(self, model: str) -> UpstreamTarget | None:
        return resolve_target(self.settings, model)

    def tools(self, model: str) -> tuple[str, ...]:
        route = self.settings.route_for(model)
        return route.tools if route is not None else ()

    def context_window(self, model: str, target: UpstreamTarget) -> int | None:
        """The route's window, else its upstream's."""
        route = self.settings.route_for(model)
        if route is not None and route.context_window is not None:
            return route.context_window
        return target.config.context_window
