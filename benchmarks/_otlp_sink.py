"""An OTLP/HTTP trace sink for the tracing scenario: accepts every export, keeps only counts.

Run as its own process (``python -m benchmarks._otlp_sink --port N``) so that
receiving the exports never shares a core's event loop with stepline.
``POST /v1/traces`` decodes the ``ExportTraceServiceRequest`` (protobuf,
gzip or not), counts its spans and answers an empty
``ExportTraceServiceResponse``, as a collector does; ``GET /stats`` says how
many requests, bytes and spans came (and is the readiness probe).
"""

from __future__ import annotations

import argparse
import gzip
from dataclasses import asdict, dataclass

import orjson
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["create_sink_app"]

_ACCEPTED = ExportTraceServiceResponse().SerializeToString()


@dataclass
class _Counts:
    requests: int = 0
    bytes: int = 0
    spans: int = 0


def create_sink_app() -> Starlette:
    counts = _Counts()

    async def export(request: Request) -> Response:
        body = await request.body()
        counts.requests += 1
        counts.bytes += len(body)
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        counts.spans += sum(
            len(scope.spans)
            for resource in message.resource_spans
            for scope in resource.scope_spans
        )
        return Response(_ACCEPTED, media_type="application/x-protobuf")

    async def stats(request: Request) -> Response:
        return Response(orjson.dumps(asdict(counts)), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/traces", export, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_sink_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
