"""``POST /v1/chat/completions``: a client's Chat Completions call, passed through.

The call gets what a ``/v1/responses`` request gets — the same keys and
model limits, the same model mapping, routing, failover and per-target
limits, the key's rate and concurrency limits, the body and input caps — and
no agent loop: the body goes to the upstream with only ``model`` changed (and
untouched when the name is the same), and the reply's bytes come back as the
upstream sent them, streamed or not, without being decoded or re-encoded.

An upstream error reply is passed on with its status (its body masked of the
upstream's key); a failure with no reply (connection, timeout) is a 502/504
in the OpenAI envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from stepline._server.auth import caller_of
from stepline._server.gateway import Gateway
from stepline._server.logs import request_id_var
from stepline._server.openapi import ChatCompletionBody, errors, json_body
from stepline._upstream.client import ChatClient, ForwardedReply
from stepline._upstream.routing import resolve_target
from stepline.errors import InvalidRequest, UpstreamError, UpstreamTimeout

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class _Relay(StreamingResponse):
    """Streams a forwarded reply; the reply and the caller's slot are freed however
    the response ends, even when the client left before the first byte."""

    def __init__(self, reply: ForwardedReply, release: Callable[[], None]) -> None:
        super().__init__(
            reply.body(),
            status_code=reply.status_code,
            media_type=reply.content_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_encoding(reply)},
        )
        self._reply = reply
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._reply.aclose()
            self._release()


def _parse(raw: bytes, max_items: int) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", param="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if len(messages) > max_items:
        raise InvalidRequest(
            f"messages has {len(messages)} items; this server accepts at most {max_items}.",
            param="messages",
        )
    return body


def _failure(exc: UpstreamError) -> Response:
    if exc.status is not None and exc.body is not None:
        # the upstream answered: pass its answer on (its key already masked)
        return Response(exc.body.encode(), status_code=exc.status, media_type="application/json")
    status = 504 if isinstance(exc, UpstreamTimeout) else 502
    return JSONResponse(
        {
            "error": {
                "message": exc.message,
                "type": "server_error",
                "param": None,
                "code": "upstream_unavailable",
            }
        },
        status_code=status,
    )


@router.post(
    "/chat/completions",
    responses=errors(400, 401, 403, 413, 429, 502, 504),
    openapi_extra=json_body(ChatCompletionBody),
)
async def chat_completions(request: Request) -> Response:
    caller = caller_of(request)
    gateway: Gateway = request.app.state.gateway
    chat: ChatClient = request.app.state.chat
    settings = request.app.state.runner.settings
    raw = await request.body()
    body = _parse(raw, settings.limits.max_input_items)
    model = body["model"]
    target = resolve_target(settings, model)
    if target is None:
        raise InvalidRequest(
            f"The model '{model}' does not exist.", param="model", code="model_not_found"
        )
    caller.check_model(model)
    release = gateway.limits.enter(caller)
    try:
        reply = await chat.forward(target, body, raw, request_id=request_id_var.get() or "unknown")
    except UpstreamError as exc:
        release()
        return _failure(exc)
    except BaseException:
        release()
        raise
    if body.get("stream") is True:
        return _Relay(reply, release)
    try:
        content = await reply.read()
    finally:
        await reply.aclose()
        release()
    return Response(
        content,
        status_code=reply.status_code,
        media_type=reply.content_type,
        headers=_encoding(reply),
    )


def _encoding(reply: ForwardedReply) -> dict[str, str]:
    return {"Content-Encoding": reply.content_encoding} if reply.content_encoding else {}
