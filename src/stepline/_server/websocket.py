"""The Responses API over a WebSocket on ``/v1/responses`` (Open Responses' WebSocket Transport).

The client sends ``{"type": "response.create", ...create body...}`` messages;
each is accepted exactly as ``POST /v1/responses`` accepts a body (one
:func:`~stepline._server.routes.accept_response`), and the connection then
reads the response's durable event log, as the SSE route does, sending each
event object as one text message. So a dropped connection never stops a
response: a stored one can still be fetched or streamed again over HTTP.

Invariants:

* One response in flight per connection; ``response.create`` messages are
  processed one after another, in order, never multiplexed.
* The connection remembers its latest response, one with ``store: false``
  with its whole conversation as items, so its continuation with
  ``previous_response_id`` works on this connection (a stored one continues
  from the store, as over HTTP, where the history cache serves it); a
  ``store: false`` continuation of an id it does not remember fails with
  ``previous_response_not_found``; a failed continuation forgets the id it
  named.
* ``stream``, ``stream_options`` and ``background`` belong to HTTP and are
  refused, except ``stream: true``, which only says what a WebSocket does anyway
  (the Agents SDK sends it on every ``response.create``).
* Errors are ``{"type": "error", "status", "error": {"type", "code",
  "message", "param"}}``; the connection stays open after one.
* A connection lasts at most :data:`CONNECTION_SECONDS`; then it gets
  ``websocket_connection_limit_reached`` and is closed.
* ``generate: false`` (Codex's warm-up) answers with a completed response
  that has no output and calls no model; it can be continued like any other.
* The handshake's ``traceparent`` parents the trace of every response the
  connection creates (:mod:`stepline._server.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from stepline._protocol.assemble import response_object
from stepline._protocol.request import new_id, parse_request
from stepline._server.gateway import Gateway
from stepline._server.limits import too_large
from stepline._server.routes import accept_response
from stepline._server.runner import Runner
from stepline._server.sse import follow_events
from stepline._server.tracing import client_trace_context
from stepline.errors import RequestError

__all__ = ["CONNECTION_SECONDS", "router"]

router = APIRouter(prefix="/v1")

#: how long one connection may stay open (the specification's 60 minutes)
CONNECTION_SECONDS = 3600.0

#: fields that belong to HTTP streaming and must not be sent on a WebSocket
_HTTP_ONLY = ("stream", "stream_options", "background")


class _TurnError(Exception):
    """A turn refused before or while it ran: sent as an error event."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int = 400,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.event = {
            "type": "error",
            "status": status,
            "error": {"type": error_type, "code": code, "message": message, "param": param},
        }


def _error_of(exc: RequestError) -> _TurnError:
    return _TurnError(
        exc.message,
        code=exc.code or exc.error_type,
        status=exc.status_code,
        param=exc.param,
        error_type=exc.error_type,
    )


@dataclass
class _Connection:
    """One WebSocket's state: its socket and the conversation of its latest response."""

    socket: WebSocket
    runner: Runner
    gateway: Gateway
    caller: Any
    #: the latest response's id and, unless the store has it, its conversation as input items
    latest_id: str | None = None
    latest_items: list[dict[str, Any]] | None = field(default_factory=list)

    async def send(self, event: dict[str, Any]) -> None:
        await self.socket.send_text(orjson.dumps(event).decode())

    async def turn(self, text: str) -> None:
        data = _create_message(text)
        previous = data.get("previous_response_id")
        try:
            if not await self._run(data):
                self._forget(previous)
        except (_TurnError, RequestError) as failed:
            self._forget(previous)
            await self.send(
                (_error_of(failed) if isinstance(failed, RequestError) else failed).event
            )

    def _forget(self, previous: Any) -> None:
        """A failed continuation forgets the response it continued."""
        if previous is not None and previous == self.latest_id:
            self.latest_id, self.latest_items = None, []

    async def _run(self, data: dict[str, Any]) -> bool:
        """Run one turn; False when its response failed."""
        generate = data.pop("generate", True)
        previous = data.get("previous_response_id")
        remembered = previous is not None and previous == self.latest_id
        # a stored response continues from the store, as over HTTP (its history is cached)
        base = self.latest_items if remembered else None
        if base is not None:
            new_input = parse_request({**data, "previous_response_id": None}).model_dump(
                mode="json", by_alias=True, exclude_unset=True
            )["input"]
            data = {**data, "input": [*base, *new_input]}
        elif previous is not None and not remembered and data.get("store") is False:
            raise _TurnError(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        if generate is False:
            await self._warm_up(data)
            return True
        try:
            accepted = await accept_response(
                self.runner,
                self.gateway,
                data,
                self.caller,
                reasoning_events=self.socket.headers.get("stepline-reasoning-events"),
                history_inline=base is not None,
                trace_context=client_trace_context(self.socket.headers),
            )
        except RequestError as exc:
            if exc.status_code == 404 and exc.param == "previous_response_id":
                raise _TurnError(
                    exc.message, code="previous_response_not_found", param=exc.param
                ) from None
            raise
        terminal: dict[str, Any] | None = None
        async for rows in follow_events(self.runner, accepted.record.id, -1):
            for row in rows:
                await self.socket.send_text(row.data.decode())
            last = orjson.loads(rows[-1].data)
            if last["type"] in ("response.completed", "response.failed", "response.incomplete"):
                terminal = last["response"]
        if terminal is None:
            return True  # the process drains: the client resumes the response over HTTP
        if terminal["status"] == "failed":
            return False
        items = accepted.request.model_dump(mode="json", by_alias=True, exclude_unset=True)["input"]
        self.latest_id = terminal["id"]
        self.latest_items = None if terminal["store"] else [*items, *terminal["output"]]
        return True

    async def _warm_up(self, data: dict[str, Any]) -> None:
        """A response that only prepares: completed, no output, no model call."""
        request = parse_request(data)
        now = self.runner.engine.clock()
        response_id = new_id("resp")
        shown = response_object(
            response_id=response_id,
            created_at=now,
            request=request,
            status="in_progress",
            output=[],
            usage=None,
        )
        done = {
            **shown,
            "status": "completed",
            "completed_at": int(now),
            "usage": {
                "input_tokens": 0,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 0,
            },
        }
        kinds = ("response.created", "response.in_progress", "response.completed")
        for seq, (kind, body) in enumerate(zip(kinds, (shown, shown, done), strict=True)):
            await self.send({"type": kind, "sequence_number": seq, "response": body})
        self.latest_id = response_id
        self.latest_items = request.model_dump(mode="json", by_alias=True, exclude_unset=True)[
            "input"
        ]


def _create_message(text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _TurnError(f"message is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict) or data.get("type") != "response.create":
        kind = data.get("type") if isinstance(data, dict) else None
        raise _TurnError(
            f"unsupported message type {kind!r}; send response.create",
            code="invalid_type",
            param="type",
        )
    if data.get("stream") is True:
        # a WebSocket always streams: the Agents SDK says so explicitly, and that is no conflict
        del data["stream"]
    for name in _HTTP_ONLY:
        if name in data:
            raise _TurnError(
                f"'{name}' is an HTTP streaming field and is not sent on a WebSocket.",
                code="invalid_request_error",
                param=name,
            )
    return {key: value for key, value in data.items() if key != "type"}


@router.websocket("/responses")
async def responses_socket(socket: WebSocket) -> None:
    gateway: Gateway = socket.app.state.gateway
    try:
        caller = await gateway.keys.authenticate(socket.headers.get("authorization"))
    except RequestError as exc:
        # refused at the upgrade: the handshake answers 403
        await socket.close(code=1008, reason=exc.message[:120])
        return
    await socket.accept()
    connection = _Connection(
        socket=socket, runner=socket.app.state.runner, gateway=gateway, caller=caller
    )
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + CONNECTION_SECONDS
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            try:
                text = await asyncio.wait_for(socket.receive_text(), ends_at - loop.time())
            except TimeoutError:
                await connection.send(
                    _TurnError(
                        "This WebSocket reached its 60-minute limit; open a new connection.",
                        code="websocket_connection_limit_reached",
                    ).event
                )
                await socket.close(code=1000)
                return
            try:
                if len(text.encode()) > gateway.max_request_bytes:
                    raise too_large(gateway.max_request_bytes)
                gateway.limits.admit(caller)
            except RequestError as exc:
                await connection.send(_error_of(exc).event)
                continue
            try:
                await connection.turn(text)
            except _TurnError as refused:
                await connection.send(refused.event)
