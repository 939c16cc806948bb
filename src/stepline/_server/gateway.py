"""What stands in front of every route: request ids, API keys, rate limits, the body cap,
and one log line and one metric per request.

:class:`GatewayMiddleware` is a pure ASGI middleware, so streamed replies pass
through it untouched. For every HTTP request it

* names the request: ``x-request-id`` (the client's, when it sent a sane one,
  else a fresh id) is on every reply, errors included, and in every log line
  written while the request runs, its loop's lines included;
* for ``/v1`` paths: authenticates the caller (401), draws from the key's
  rate (429 with ``Retry-After``) and caps the body (413), before any route
  runs; the caller is left in the scope for the routes (``caller_of``);
* turns an unexpected exception into the 500 envelope, which says no more
  than that (the log line has the traceback, secrets masked).

An SSE stream is sent from here, not from inside the routing stack
(:func:`hand_off`): its route returns, FastAPI's and Starlette's layers
unwind (their exit stacks, the request, the routing scope), and the gateway
sends the stream itself, its access log line written when it ends, as before.
An open stream then holds its reply and the gateway's frame, not every
layer's: some 8 KB less per stream.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepline._server.auth import CALLER_SCOPE_KEY, Caller, KeyRing
from stepline._server.limits import KeyLimits, cap_body, too_large
from stepline._server.logs import request_id_var, response_id_var
from stepline._server.metrics import Metrics
from stepline.errors import RequestError

__all__ = ["Gateway", "GatewayMiddleware", "hand_off"]

logger = logging.getLogger("stepline.server")
access_logger = logging.getLogger("stepline.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: the scope entry where a reply waits to be sent by the gateway (see ``hand_off``)
_HAND_OFF = "stepline.hand_off"


@dataclass(kw_only=True)
class Gateway:
    """The state the middleware and the routes share."""

    keys: KeyRing
    limits: KeyLimits
    metrics: Metrics
    max_request_bytes: int


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.to_envelope(), status_code=exc.status_code, headers=exc.headers)


_SERVER_ERROR = RequestError(
    "The server had an error processing your request.",
    status_code=500,
    error_type="server_error",
)


def hand_off(scope: Scope, reply: ASGIApp) -> bool:
    """Leave ``reply`` for the gateway to send once the routing stack has returned;
    False outside the gateway (the caller then sends it itself).

    A reply that hands itself off must send nothing before it does."""
    waiting: list[ASGIApp] | None = scope.get(_HAND_OFF)
    if waiting is None or waiting:
        return False
    waiting.append(reply)
    return True


def _is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id")
        request_id = (
            incoming if incoming and _REQUEST_ID.match(incoming) else f"req_{secrets.token_hex(12)}"
        )
        context = request_id_var.set(request_id)
        response_context = response_id_var.set(None)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message).append("x-request-id", request_id)
            await send(message)

        caller: Caller | None = None
        route = None
        try:
            if _is_api(scope["path"]):
                try:
                    caller = await self._admit(headers)
                except RequestError as exc:
                    await _error_response(exc)(scope, receive, send_with_id)
                    return
                receive = cap_body(receive, self.gateway.max_request_bytes)
            # the routing stack's own scope: what it leaves there goes with it
            waiting: list[ASGIApp] = []
            inner = {**scope, _HAND_OFF: waiting}
            if caller is not None:
                inner[CALLER_SCOPE_KEY] = caller
            try:
                await self.app(inner, receive, send_with_id)
            finally:
                route = inner.get("route")
                del inner
            if waiting:
                await waiting.pop()(scope, receive, send_with_id)
        except ClientDisconnect:
            raise
        except Exception:
            logger.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            await _error_response(_SERVER_ERROR)(scope, receive, send_with_id)
        finally:
            self._done(scope, route, status, time.perf_counter() - started, caller)
            response_id_var.reset(response_context)
            request_id_var.reset(context)

    async def _admit(self, headers: Headers) -> Caller:
        """The caller, authenticated and within its rate, of a request whose body fits."""
        length = headers.get("content-length")
        limit = self.gateway.max_request_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(limit)
        caller = await self.gateway.keys.authenticate(headers.get("authorization"))
        self.gateway.limits.admit(caller)
        return caller

    def _done(
        self, scope: Scope, route: object, status: int, seconds: float, caller: Caller | None
    ) -> None:
        method = scope["method"]
        self.gateway.metrics.http_request(
            method, getattr(route, "path", None) or "unmatched", status
        )
        fields = {
            "method": method,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
        }
        if caller is not None and caller.key is not None:
            fields["key"] = caller.key.name
            fields["key_id"] = caller.key.id
        access_logger.info("%s %s %d", method, scope["path"], status, extra=fields)
