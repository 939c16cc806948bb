"""The floor: the least a Python server on stepline's stack adds to one model call.

``python -m benchmarks._floor_server --port N --upstream URL --client NAME`` serves
a bare ASGI app on uvicorn with the event loop and HTTP parser stepline runs on
(uvloop, httptools). ``POST /v1/responses`` reads the body, sends the one
Chat Completions body the harness gave it (``--body``, streamed), joins the
text of the reply, and answers a small response object. Nothing is parsed,
validated, stored or routed: what it costs over the direct call is what the
HTTP server and the upstream client cost, and no more.

``--client httpx``: an ``httpx.AsyncClient``, reading the SSE lines with
``aiter_lines``; ``--client stepline``: stepline's own upstream client
(:class:`~stepline._upstream.client.ChatClient`, its transport and SSE parser).
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import orjson
import uvicorn

from stepline._config import UpstreamConfig
from stepline._upstream.client import ChatClient
from stepline._upstream.routing import UpstreamTarget

__all__ = ["main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _app(
    upstream: str, body: bytes, client: str
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    payload = orjson.loads(body)
    http = httpx.AsyncClient(timeout=30) if client == "httpx" else None
    chat = ChatClient() if client == "stepline" else None
    target = UpstreamTarget(
        name="floor",
        base_url=f"{upstream}/v1",
        api_key=None,
        upstream_model=payload["model"],
        config=UpstreamConfig(base_url=f"{upstream}/v1"),
    )

    async def call_httpx() -> str:
        assert http is not None
        text: list[str] = []
        headers = {"content-type": "application/json"}
        url = f"{upstream}/v1/chat/completions"
        async with http.stream("POST", url, content=body, headers=headers) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for choice in orjson.loads(line[6:]).get("choices", ()):
                        if content := choice.get("delta", {}).get("content"):
                            text.append(content)
        return "".join(text)

    async def call_stepline() -> str:
        assert chat is not None
        text: list[str] = []
        async for chunk in chat.stream(target, payload, step_id="floor"):
            for choice in chunk.get("choices", ()):
                if content := choice.get("delta", {}).get("content"):
                    text.append(content)
        return "".join(text)

    call = call_httpx if client == "httpx" else call_stepline

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            reply = b'{"object":"list","data":[]}'
        else:
            request = orjson.loads(received)
            text = await call()
            reply = orjson.dumps(
                {
                    "id": "resp_floor",
                    "object": "response",
                    "status": "completed",
                    "model": request.get("model"),
                    "output": [
                        {"type": "message", "content": [{"type": "output_text", "text": text}]}
                    ],
                }
            )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--body", required=True, help="the Chat Completions body, JSON")
    parser.add_argument("--client", choices=("httpx", "stepline"), required=True)
    args = parser.parse_args()
    app = _app(args.upstream, args.body.encode(), args.client)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
