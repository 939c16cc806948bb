"""OpenTelemetry traces of responses, model calls and tool calls, in the GenAI conventions.

:class:`Tracing` is one more sink of the loop's events
(:class:`~stepline._engine.sinks.StepObserver`).
A response's run is an ``invoke_agent {model}`` span; each model call is a
``chat {upstream model}`` span under it, each tool call an ``execute_tool
{tool}`` span, and a sub-agent an ``invoke_agent {tool}`` span under the tool
call that runs it, its own steps beneath. Every span carries
``stepline.response.id``, and a step's ``stepline.step.id``, so a trace and the
stored chain name the same things.

The W3C ``traceparent`` (and ``tracestate``) a client sends, over HTTP or in
a WebSocket's handshake, is kept in the stored request body
(:data:`TRACE_CONTEXT_FIELD`, part of the one write that creates the
response: no write of its own) and parents the response's span. Each step's
span goes on as ``traceparent`` to the upstream and to HTTP tools
(:meth:`Tracing.step_headers`). A run resumed on another process after a crash
starts a new trace with a link to that stored context.

Invariants:

* Off (the default), nothing here runs: no tracer, no span, no attribute;
  the OpenTelemetry SDK and exporter are imported only when tracing is on.
* Spans take their times from the stored steps (``started_at``,
  ``finished_at``) and the response (``created_at``).
* Every span started is ended once: a step's when it finishes, else with its
  response's; a run's when the response ends, else when the run's task does
  (drain, lost lease, cancellation: ``stepline.response.stopped``).
* Prompts, completions, tool arguments and results are recorded only when
  the operator opted in (``capture_content``).
* A hook never raises into the loop: a failure is logged and dropped.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, ParamSpec

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from stepline._config import AgentToolConfig, Settings, TracingConfig
from stepline._engine.sinks import StepObserver
from stepline._steps import Step, StepState, call_arguments, call_name
from stepline._upstream.routing import UpstreamTarget
from stepline.errors import ConfigError
from stepline.store._base import ResponseRecord

__all__ = [
    "TRACE_CONTEXT_FIELD",
    "Tracing",
    "TracingOptions",
    "client_trace_context",
    "tracing_options",
]

logger = logging.getLogger(__name__)

#: where a stored request body keeps the client's W3C trace context
TRACE_CONTEXT_FIELD = "stepline:trace_context"

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: the W3C limit of a ``tracestate`` header worth passing on
_TRACESTATE_LIMIT = 512
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_EXPORTERS = frozenset({"otlp", "console", "none"})
#: the GenAI conventions' flavour of the upstreams' API
_PROVIDER = "openai"

_P = ParamSpec("_P")


def client_trace_context(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace context of a client's request headers, if it sent a well-formed one."""
    traceparent = headers.get("traceparent")
    if traceparent is None or not _TRACEPARENT.fullmatch(traceparent.strip()):
        return None
    context = {"traceparent": traceparent.strip()}
    tracestate = headers.get("tracestate")
    if tracestate and len(tracestate) <= _TRACESTATE_LIMIT:
        context["tracestate"] = tracestate
    return context


# -- options --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TracingOptions:
    """Tracing as configured: the ``[tracing]`` section over the ``OTEL_*`` variables."""

    exporter: Literal["otlp", "console"]
    #: the traces URL for the OTLP exporter; None: it reads ``OTEL_EXPORTER_OTLP_*`` itself
    endpoint: str | None
    service_name: str | None
    capture_content: bool


def tracing_options(
    config: TracingConfig, environ: Mapping[str, str] = os.environ
) -> TracingOptions | None:
    """How to trace, or None when tracing is off; a ConfigError names what cannot work."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    for name in names:
        if name not in _EXPORTERS:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}: stepline exports traces with "
                "'otlp' (OTLP over HTTP) or 'console', or not at all ('none')"
            )
    chosen = [name for name in names if name != "none"]
    enabled = config.enabled
    if enabled is None:
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            enabled = False
        elif names:
            enabled = bool(chosen)
        else:
            enabled = bool(
                config.endpoint
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            )
    if not enabled:
        return None
    exporter: Literal["otlp", "console"] = "console" if chosen == ["console"] else "otlp"
    if exporter == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        if protocol and protocol.strip() != "http/protobuf":
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol.strip()!r}: stepline exports OTLP "
                "over HTTP ('http/protobuf'); point it at the collector's HTTP port (4318)"
            )
    needed = ["opentelemetry.sdk"]
    if exporter == "otlp":
        needed.append("opentelemetry.exporter.otlp.proto.http")
    if any(importlib.util.find_spec(module) is None for module in needed):
        raise ConfigError(
            "tracing is on but the OpenTelemetry SDK or its OTLP exporter is not installed: "
            "pip install 'stepline[tracing]'"
        )
    capture = config.capture_content
    if capture is None:
        flag = environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
        capture = flag.strip().lower() == "true"
    return TracingOptions(
        exporter=exporter,
        endpoint=f"{config.endpoint.rstrip('/')}/v1/traces" if config.endpoint else None,
        service_name=config.service_name,
        capture_content=capture,
    )


# -- the observer -----------------------------------------------------------------


def _guarded(method: Callable[_P, None]) -> Callable[_P, None]:
    @functools.wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("recording a trace span failed")

    return run


@dataclass(kw_only=True)
class _Run:
    """The spans of one response's run in this process."""

    span: Span
    #: spans of its steps still running, and of the sub-agents they run, by step id
    steps: dict[str, Span] = field(default_factory=dict)
    agents: dict[str, Span] = field(default_factory=dict)


class Tracing(StepObserver):
    """Spans for the loop's hooks, and the trace headers of each running step."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        agents: Mapping[str, str] | None = None,
        capture_content: bool = False,
        shutdown: Callable[[], None] | None = None,
    ) -> None:
        self._tracer = tracer
        #: the agent tools' models by tool name: these run sub-agents
        self._agents = dict(agents or {})
        self.capture_content = capture_content
        self._shutdown = shutdown
        self._runs: dict[str, _Run] = {}
        #: every running step's span, by step id, for :meth:`step_headers`
        self._steps: dict[str, Span] = {}

    @classmethod
    def start(cls, options: TracingOptions, settings: Settings) -> Tracing:
        """A tracer exporting through a batch processor (the SDK is imported here only)."""
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )

        resource = Resource.create(
            {SERVICE_NAME: options.service_name} if options.service_name else {}
        )
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "stepline"}))
        exporter: SpanExporter
        if options.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.endpoint)
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(
            provider.get_tracer("stepline"),
            agents=_agent_models(settings),
            capture_content=options.capture_content,
            shutdown=provider.shutdown,
        )

    def shutdown(self) -> None:
        """Export what is still buffered, then stop (blocking: run it off the loop)."""
        if self._shutdown is not None:
            self._shutdown()

    def step_headers(self, step_id: str) -> Mapping[str, str]:
        """``traceparent`` (and ``tracestate``) naming a running step's span, for the
        requests it sends; nothing for a step with no span."""
        span = self._steps.get(step_id)
        if span is None:
            return _NO_HEADERS
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    # -- StepObserver ----------------------------------------------------------

    @_guarded
    def response_started(self, record: ResponseRecord, *, resumed: bool) -> None:
        stale = self._runs.pop(record.id, None)
        if stale is not None:
            self._end_run(stale, stopped=True)
        stored = record.body.get(TRACE_CONTEXT_FIELD)
        remote = _PROPAGATOR.extract(stored) if isinstance(stored, dict) else None
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": record.model,
            "gen_ai.request.model": record.model,
            "stepline.response.id": record.id,
        }
        links: list[Link] = []
        parent: Context | None = remote
        if resumed:
            # a new trace: the one the response began in may be long closed
            attributes["stepline.response.resumed"] = True
            parent = Context()
            if remote is not None:
                linked = trace.get_current_span(remote).get_span_context()
                if linked.is_valid:
                    links.append(Link(linked, {"stepline.link": "resumed_from"}))
        span = self._tracer.start_span(
            f"invoke_agent {record.model}",
            context=parent if parent is not None else Context(),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=None if resumed else _ns(record.created_at),
        )
        run = _Run(span=span)
        self._runs[record.id] = run
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(functools.partial(self._task_done, record.id, run))

    @_guarded
    def model_call_started(
        self, step: Step, *, target: UpstreamTarget, payload: Mapping[str, Any]
    ) -> None:
        run = self._runs.get(step.response_id)
        if run is None:
            return
        attributes = _step_attributes(step)
        attributes.update(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": _PROVIDER,
                "gen_ai.request.model": target.upstream_model,
                "stepline.upstream": target.name,
            }
        )
        for name, key in _REQUEST_PARAMETERS:
            value = payload.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[name] = value
        if self.capture_content:
            attributes["gen_ai.input.messages"] = _messages_json(payload.get("messages") or ())
        self._open(run, step, f"chat {target.upstream_model}", SpanKind.CLIENT, attributes)

    @_guarded
    def model_call_finished(self, step: Step, *, target: str) -> None:
        run = self._runs.get(step.response_id)
        if run is None:
            return
        span = run.steps.pop(step.id, None)
        self._steps.pop(step.id, None)
        if span is None:
            # ended before it was sent (an invalid conversation): a span all the same
            attributes = _step_attributes(step)
            attributes.update({"gen_ai.operation.name": "chat", "stepline.upstream": target})
            span = self._span(run, step, "chat", SpanKind.CLIENT, attributes)
        response = step.response or {}
        usage = response.get("usage") or {}
        if usage:
            span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("input_tokens", 0)))
            span.set_attribute("gen_ai.usage.output_tokens", int(usage.get("output_tokens", 0)))
        finish_reason = response.get("finish_reason")
        if isinstance(finish_reason, str):
            span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        model = response.get("model")
        if isinstance(model, str) and model:
            span.set_attribute("gen_ai.response.model", model)
        if self.capture_content and "message" in response:
            output = [
                {
                    "role": "assistant",
                    "parts": _parts(response["message"]),
                    "finish_reason": finish_reason,
                }
            ]
            span.set_attribute("gen_ai.output.messages", orjson.dumps(output).decode())
        _end_step(span, step)

    @_guarded
    def tool_call_started(self, step: Step) -> None:
        run = self._runs.get(step.response_id)
        if run is None:
            return
        name = step.tool_name
        attributes = _step_attributes(step)
        attributes.update(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.type": "extension",
            }
        )
        if step.call_id is not None:
            attributes["gen_ai.tool.call.id"] = step.call_id
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = str(step.request.get("arguments", ""))
        span = self._open(run, step, f"execute_tool {name}", SpanKind.INTERNAL, attributes)
        model = self._agents.get(name)
        if model is not None:
            agent = self._tracer.start_span(
                f"invoke_agent {name}",
                context=trace.set_span_in_context(span),
                kind=SpanKind.INTERNAL,
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": name,
                    "gen_ai.request.model": model,
                    "stepline.response.id": step.response_id,
                    "stepline.step.id": step.id,
                },
                start_time=_ns(step.started_at),
            )
            run.agents[step.id] = agent

    @_guarded
    def tool_call_finished(self, step: Step) -> None:
        run = self._runs.get(step.response_id)
        if run is None:
            return
        agent = run.agents.pop(step.id, None)
        if agent is not None:
            _end_step(agent, step)
        span = run.steps.pop(step.id, None)
        self._steps.pop(step.id, None)
        if span is None:
            return
        output = (step.response or {}).get("output")
        if self.capture_content and isinstance(output, str):
            span.set_attribute("gen_ai.tool.call.result", output)
        _end_step(span, step)

    @_guarded
    def response_finished(self, response: dict[str, Any]) -> None:
        run = self._runs.pop(str(response.get("id")), None)
        if run is None:
            return
        span = run.span
        status = str(response.get("status"))
        span.set_attribute("stepline.response.status", status)
        usage = response.get("usage") or {}
        if usage:
            span.set_attribute("gen_ai.usage.input_tokens", int(usage.get("input_tokens", 0)))
            span.set_attribute("gen_ai.usage.output_tokens", int(usage.get("output_tokens", 0)))
        reason = (response.get("incomplete_details") or {}).get("reason")
        if reason:
            span.set_attribute("stepline.response.incomplete_reason", str(reason))
        error = response.get("error")
        if status == "failed" and isinstance(error, dict):
            span.set_attribute("error.type", str(error.get("code") or "_OTHER"))
            span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))))
        self._end_run(run, stopped=False)

    # -- spans -----------------------------------------------------------------

    @_guarded
    def _task_done(self, response_id: str, run: _Run, _: asyncio.Task[Any]) -> None:
        """The run's task ended: a run the response's end did not close stopped here."""
        if self._runs.get(response_id) is run:
            del self._runs[response_id]
            self._end_run(run, stopped=True)

    def _end_run(self, run: _Run, *, stopped: bool) -> None:
        for spans in (run.agents, run.steps):
            for step_id, span in spans.items():
                self._steps.pop(step_id, None)
                span.set_attribute("stepline.step.unfinished", True)
                span.end()
            spans.clear()
        if stopped:
            run.span.set_attribute("stepline.response.stopped", True)
        run.span.end()

    def _parent(self, run: _Run, step: Step) -> Span:
        """A top-level step's parent is the run; a sub-agent's, the agent it belongs to."""
        if step.scope is None:
            return run.span
        return run.agents.get(step.scope) or run.steps.get(step.scope) or run.span

    def _span(
        self,
        run: _Run,
        step: Step,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
    ) -> Span:
        return self._tracer.start_span(
            name,
            context=trace.set_span_in_context(self._parent(run, step)),
            kind=kind,
            attributes=attributes,
            start_time=_ns(step.started_at),
        )

    def _open(
        self,
        run: _Run,
        step: Step,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
    ) -> Span:
        stale = run.steps.pop(step.id, None)
        if stale is not None:
            stale.end()
        span = self._span(run, step, name, kind, attributes)
        run.steps[step.id] = span
        self._steps[step.id] = span
        return span


def _agent_models(settings: Settings) -> dict[str, str]:
    """The configured agent tools (they run sub-agents), with their models."""
    return {
        name: tool.model
        for name, tool in settings.tools.items()
        if isinstance(tool, AgentToolConfig)
    }


#: request parameters recorded on a ``chat`` span: (attribute, Chat Completions field)
_REQUEST_PARAMETERS = (
    ("gen_ai.request.temperature", "temperature"),
    ("gen_ai.request.top_p", "top_p"),
    ("gen_ai.request.max_tokens", "max_completion_tokens"),
    ("gen_ai.request.max_tokens", "max_tokens"),
    ("gen_ai.request.presence_penalty", "presence_penalty"),
    ("gen_ai.request.frequency_penalty", "frequency_penalty"),
)


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1_000_000_000)


def _step_attributes(step: Step) -> dict[str, AttributeValue]:
    return {
        "stepline.response.id": step.response_id,
        "stepline.step.id": step.id,
        "stepline.step.attempt": step.attempt,
    }


def _end_step(span: Span, step: Step) -> None:
    """End a step's span at its stored end, with its error as the span's status."""
    span.set_attribute("stepline.step.state", step.state.value)
    if step.state is not StepState.COMPLETED:
        error = step.error or {}
        kind = "cancelled" if step.state is StepState.CANCELLED else error.get("code")
        span.set_attribute("error.type", str(kind or "_OTHER"))
        if isinstance(error.get("status"), int):
            span.set_attribute("http.response.status_code", error["status"])
        span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))))
    span.end(end_time=_ns(step.finished_at))


def _parts(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A chat message's content as the GenAI conventions' message parts."""
    content = message.get("content")
    if message.get("role") == "tool":
        return [
            {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}
        ]
    parts: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if reasoning:
        parts.append({"type": "reasoning", "content": reasoning})
    if isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            text = part.get("text")
            if isinstance(text, str):
                parts.append({"type": "text", "content": text})
            else:  # an image or a file: named, its bytes left out
                parts.append({"type": str(part.get("type", "unknown"))})
    for call in message.get("tool_calls") or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call_name(call),
                "arguments": call_arguments(call),
            }
        )
    return parts


def _messages_json(messages: Sequence[Mapping[str, Any]]) -> str:
    return orjson.dumps(
        [{"role": message.get("role"), "parts": _parts(message)} for message in messages]
    ).decode()
