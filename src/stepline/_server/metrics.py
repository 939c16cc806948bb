"""Prometheus metrics, and the one log line per finished step.

:class:`Metrics` is a sink of the loop's events (:class:`~stepline._engine.sinks.StepObserver`)
and the upstream client's :class:`~stepline._upstream.client.UpstreamObserver`
at once, and owns the registry that ``GET /metrics`` renders. Each app has its
own registry, so several apps in one process (tests) never share counts.

Invariants:

* Label values come from the config or the code, never from a request: a
  tool name the model made up is ``unknown``, a target is an upstream's name,
  a route is the path template (``unmatched`` for any other path), an HTTP
  method outside the standard few is ``other``, and so is a status outside
  100-599. A client, authenticated or not, cannot grow the series without bound.
* Sinks run inline on the loop's task: each method is a few counter
  updates, and none raises (a failure is logged and dropped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ParamSpec

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from stepline._config import Settings
from stepline._engine.sinks import StepObserver
from stepline._steps import Step, StepKind, StepState

__all__ = ["Metrics", "router"]

logger = logging.getLogger("stepline.steps")

#: the HTTP methods counted by name; any other token a client sends is ``other``
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


_P = ParamSpec("_P")


def _guarded(method: Callable[_P, None]) -> Callable[_P, None]:
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("recording a metric failed")

    return run


class Metrics(StepObserver):
    """Every metric stepline exports, and the observers that feed them (the loop's
    start hooks are :class:`StepObserver`'s no-ops: a metric is counted when a step ends)."""

    def __init__(self, settings: Settings) -> None:
        self._tools = frozenset(settings.tools)
        self.registry = CollectorRegistry()
        registry = self.registry
        self.responses = Counter(
            "stepline_responses",
            "Responses that reached a terminal status.",
            ["status"],
            registry=registry,
        )
        self.steps = Histogram(
            "stepline_step_duration_seconds",
            "Duration of finished steps, by kind and final state.",
            ["kind", "state"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "stepline_upstream_request_duration_seconds",
            "One attempt at an upstream, from sending to the end of its reply.",
            ["target"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "stepline_upstream_errors",
            "Failed upstream attempts, by target and kind (connect, timeout, http_NNN, stream).",
            ["target", "kind"],
            registry=registry,
        )
        self.upstream_cooldowns = Counter(
            "stepline_upstream_cooldowns",
            "Times a target was taken out of rotation after repeated failures.",
            ["target"],
            registry=registry,
        )
        self.tool_seconds = Histogram(
            "stepline_tool_duration_seconds",
            "Duration of server tool calls.",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tool_errors = Counter(
            "stepline_tool_errors",
            "Server tool calls that failed.",
            ["tool"],
            registry=registry,
        )
        self.tokens = Counter(
            "stepline_tokens",
            "Model tokens, by direction (input, output), over every model call.",
            ["direction"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "stepline_open_streams",
            "Server-Sent Event streams open to clients.",
            registry=registry,
        )
        self.http_requests = Counter(
            "stepline_http_requests",
            "HTTP requests, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @_guarded
    def http_request(self, method: str, route: str, status: int) -> None:
        """Count one finished HTTP request; ``route`` is a template or ``unmatched``."""
        method = method if method in _METHODS else "other"
        code = str(status) if 100 <= status <= 599 else "other"
        self.http_requests.labels(method, route, code).inc()

    # -- StepObserver --------------------------------------------------------

    @_guarded
    def model_call_finished(self, step: Step, *, target: str) -> None:
        self._step(step)
        if step.state is StepState.COMPLETED and step.response is not None:
            usage = step.response.get("usage") or {}
            self.tokens.labels("input").inc(int(usage.get("input_tokens", 0)))
            self.tokens.labels("output").inc(int(usage.get("output_tokens", 0)))

    @_guarded
    def tool_call_finished(self, step: Step) -> None:
        self._step(step)
        tool = step.tool_name if step.tool_name in self._tools else "unknown"
        seconds = _seconds(step)
        if seconds is not None:
            self.tool_seconds.labels(tool).observe(seconds)
        if step.state is StepState.FAILED:
            self.tool_errors.labels(tool).inc()

    @_guarded
    def response_finished(self, response: dict[str, Any]) -> None:
        self.responses.labels(str(response.get("status"))).inc()

    def _step(self, step: Step) -> None:
        seconds = _seconds(step)
        if seconds is not None:
            self.steps.labels(step.kind.value, step.state.value).observe(seconds)
        fields: dict[str, Any] = {
            "response_id": step.response_id,
            "step_id": step.id,
            "kind": step.kind.value,
            "state": step.state.value,
            "attempt": step.attempt,
        }
        if seconds is not None:
            fields["duration_ms"] = round(seconds * 1000, 1)
        if step.kind is StepKind.TOOL_CALL:
            fields["tool"] = step.tool_name
        if step.error is not None:
            fields["error"] = str(step.error.get("message", ""))[:300]
        logger.info("step %s %s", step.kind.value, step.state.value, extra=fields)

    # -- UpstreamObserver ----------------------------------------------------

    @_guarded
    def upstream_attempt(self, target: str, *, seconds: float, error: str | None) -> None:
        self.upstream_seconds.labels(target).observe(seconds)
        if error is not None:
            self.upstream_errors.labels(target, error).inc()

    @_guarded
    def upstream_cooldown(self, target: str) -> None:
        self.upstream_cooldowns.labels(target).inc()
        logging.getLogger("stepline.upstream").warning(
            "upstream %s taken out of rotation after repeated failures", target
        )


def _seconds(step: Step) -> float | None:
    if step.started_at is None or step.finished_at is None:
        return None
    return max(0.0, step.finished_at - step.started_at)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
