"""The HTTP tools of the benchmark loop: ``POST /tools/NAME`` answers at once.

Run as its own process (``python -m benchmarks._toolserver --port N``) so
the tools never share an event loop with stepline or the load generator.
The answer is a small JSON object naming the tool and echoing the arguments.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["create_tool_app"]


async def _tool(request: Request) -> Response:
    arguments = orjson.loads(await request.body() or b"{}")
    body = {"tool": request.path_params["name"], "arguments": arguments, "result": "ok"}
    return Response(orjson.dumps(body), media_type="application/json")


async def _health(request: Request) -> Response:
    return Response(b'{"object":"list","data":[]}', media_type="application/json")


def create_tool_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/tools/{name}", _tool, methods=["POST"]),
            Route("/v1/models", _health, methods=["GET"]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_tool_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
