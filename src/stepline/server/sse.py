"""Read a response's event log as Server-Sent Events, from any sequence number.

The same reader serves a live stream, a resumed stream (``starting_after``)
and a replay of a finished response: a loop running in this process is
followed through its in-memory log (which reads back from the store what it
no longer holds); a response running in another process (or taken over by
one while it was followed here) is followed through the store, woken by the
store's event notifications (LISTEN/NOTIFY on PostgreSQL).

Each event is one SSE block (``event:`` equal to the JSON ``type``, then one
``data:`` line) written whole; events that are ready together are written
together. The stream ends after the terminal event with ``data: [DONE]``.

:class:`EventStream` is the HTTP response. It writes the frames while one
task listens for the client leaving: a client that leaves stops the frames,
frames that end stop the listener, and the frames are closed however the
response ends. A stream open for minutes holds one coroutine chain and one
small task, no more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stepline.engine.event_log import EventLog
from stepline.errors import LeaseLost
from stepline.protocol.events import TERMINAL_EVENT_TYPES, event_type
from stepline.server.runner import Runner
from stepline.store.base import TERMINAL_STATUSES, EventRow

__all__ = ["EventStream", "follow_events", "sse_frames"]

_PAGE = 1000
#: the longest a follower of another process waits without a notification
_WAIT_SECONDS = 1.0
_TERMINAL = frozenset(name.encode() for name in TERMINAL_EVENT_TYPES)


def _local_log(runner: Runner, response_id: str) -> EventLog | None:
    """The log of the response's loop in this process, unless another process took it."""
    log = runner.logs.get(response_id)
    if log is None or isinstance(log.failure, LeaseLost):
        return None
    return log


async def follow_events(
    runner: Runner, response_id: str, after: int
) -> AsyncIterator[list[EventRow]]:
    """Batches of events with ``seq > after`` until the response's stream ends."""
    store = runner.engine.store
    while True:
        log = _local_log(runner, response_id)
        if log is not None:
            try:
                async for rows in log.follow(after):
                    yield rows
                    after = rows[-1].seq
            except LeaseLost:
                continue  # another process runs it now: follow it through the store
            return
        # the loop runs in another process (or awaits a claim); the watch is registered
        # before the first read, so a wake-up between a read and the wait is kept
        with store.watch_events(response_id) as watch:
            finished = False
            while _local_log(runner, response_id) is None:
                rows = await store.read_events(response_id, after=after, limit=_PAGE)
                if rows:
                    yield rows
                    after = rows[-1].seq
                    if event_type(rows[-1].data) in _TERMINAL:
                        return
                    continue
                if finished:
                    return
                record = await store.get_response(response_id)
                if record is None or record.status in TERMINAL_STATUSES:
                    # read once more: its last events were committed before its status
                    finished = True
                    continue
                await watch.wait(_WAIT_SECONDS)


def _frame(row: EventRow) -> bytes:
    return b"event: " + event_type(row.data) + b"\ndata: " + row.data + b"\n\n"


async def sse_frames(runner: Runner, response_id: str, after: int) -> AsyncGenerator[bytes, None]:
    """The SSE body; ``[DONE]`` only once the response has ended.

    A stream that stops while its response goes on (the process drains) just
    closes, so the client knows to resume it with ``starting_after``.
    """
    async for rows in follow_events(runner, response_id, after):
        yield b"".join(_frame(row) for row in rows)
    record = await runner.engine.store.get_response(response_id)
    if record is None or record.status in TERMINAL_STATUSES:
        yield b"data: [DONE]\n\n"


class Counter(Protocol):
    """What counts open streams (a Prometheus gauge)."""

    def inc(self) -> None: ...

    def dec(self) -> None: ...


class EventStream(Response):
    """An SSE response of ``frames``, counted in ``open_streams`` while they flow.

    The count drops before the end of the body is sent, so a client that saw
    the end never sees the stream counted.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str] | None = None,
        open_streams: Counter | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._frames = frames
        self._open_streams = open_streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        ending = False  # set before the last send: a client leaving after it stops nothing
        left = False

        async def listen() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            if not ending:
                left = True
                streaming.cancel()

        listener = asyncio.get_running_loop().create_task(listen())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            await self._send_frames(send)
            ending = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # the client left: that cancellation is this stream's own, any other goes on
            if not left or streaming.uncancel() > 0:
                raise
        finally:
            ending = True
            listener.cancel()
            await self._frames.aclose()
            await asyncio.wait((listener,))
            if not listener.cancelled():
                listener.exception()  # retrieved: a receive that failed ended the stream

    async def _send_frames(self, send: Send) -> None:
        counter = self._open_streams
        if counter is not None:
            counter.inc()
        try:
            async for frame in self._frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        finally:
            if counter is not None:
                counter.dec()
