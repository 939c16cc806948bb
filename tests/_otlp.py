"""An OTLP/HTTP trace collector for tests: a Starlette app that keeps every span it is sent.

Serve :meth:`Receiver.app` (``stepline.scripted.serve_app``) and point a
stepline process at its URL (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``[tracing] endpoint``). Each ``ExportTraceServiceRequest`` (protobuf,
gzip or not) is decoded with ``opentelemetry-proto`` into
:class:`ReceivedSpan` values, ids as hex and attributes as plain Python
values; :meth:`Receiver.response_span` waits for a response's run to have
been exported whole (its ``invoke_agent`` span ends after every other span
of the run).
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["ReceivedSpan", "Receiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start: int
    end: int
    attributes: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int
    service: str


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {pair.key: _value(pair.value) for pair in value.kvlist_value.values}
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def export(request: Request) -> Response:
            body = await request.body()
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            assert request.headers["content-type"] == "application/x-protobuf"
            message = ExportTraceServiceRequest.FromString(body)
            for resource_spans in message.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                start=span.start_time_unix_nano,
                                end=span.end_time_unix_nano,
                                attributes=_attributes(span.attributes),
                                links=[
                                    (
                                        link.trace_id.hex(),
                                        link.span_id.hex(),
                                        _attributes(link.attributes),
                                    )
                                    for link in span.links
                                ],
                                status_code=span.status.code,
                                service=str(resource.get("service.name")),
                            )
                        )
            self._changed.set()
            self._changed = asyncio.Event()
            return Response(
                ExportTraceServiceResponse().SerializeToString(),
                media_type="application/x-protobuf",
            )

        return Starlette(routes=[Route("/v1/traces", export, methods=["POST"])])

    async def response_span(
        self, response_id: str, *, resumed: bool = False, within: float = 30.0
    ) -> ReceivedSpan:
        """The ended span of a response's run (every span of the run ended before it)."""
        async with asyncio.timeout(within):
            while True:
                for span in self.spans:
                    attributes = span.attributes
                    if (
                        attributes.get("gen_ai.operation.name") == "invoke_agent"
                        and attributes.get("stepline.response.id") == response_id
                        and "stepline.step.id" not in attributes
                        and attributes.get("stepline.response.resumed", False) == resumed
                    ):
                        return span
                await self._changed.wait()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]
