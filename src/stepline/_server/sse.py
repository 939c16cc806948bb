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
frames that end stop the listener, and the reader is closed however the
response ends. A thousand open streams are a thousand of these, so an open
stream holds one reader object and one small task, no generators.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from stepline._engine.event_log import EventLog, EventLogFailed
from stepline._protocol.events import TERMINAL_EVENT_TYPES, event_type
from stepline._server.gateway import hand_off
from stepline._server.replies import store_unavailable
from stepline._server.runner import Runner
from stepline.errors import LeaseLost, StoreError
from stepline.store._base import TERMINAL_STATUSES, EventRow
from stepline.store._notify import EventWatch

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


class _Follower:
    """One reader's place in a response's events, read batch by batch.

    A plain object rather than nested generators: an open stream holds this
    and no more. The store watch is registered only to follow another
    process, before the first read, so a wake-up between a read and the wait
    is kept; :meth:`close` drops it.
    """

    def __init__(self, runner: Runner, response_id: str, after: int) -> None:
        self._runner = runner
        self._response_id = response_id
        self._after = after
        self._watch: EventWatch | None = None
        self._ended = False

    async def next_batch(self) -> list[EventRow] | None:
        """Events with ``seq > after`` (the last one returned); None once the stream ends."""
        store = self._runner.engine.store
        finished = False  # the response ended elsewhere: read once more, then stop
        while not self._ended:
            log = _local_log(self._runner, self._response_id)
            if log is not None:
                self.close()
                try:
                    rows = await log.read(self._after + 1)
                except LeaseLost:
                    continue  # another process runs it now: follow it through the store
                if rows is None:
                    break
                self._after = rows[-1].seq
                return rows
            # the loop runs in another process (or awaits a claim)
            if self._watch is None:
                self._watch = store.watch_events(self._response_id)
            rows = await store.read_events(self._response_id, after=self._after, limit=_PAGE)
            if rows:
                self._after = rows[-1].seq
                self._ended = event_type(rows[-1].data) in _TERMINAL
                return rows
            if finished:
                break
            record = await store.get_response(self._response_id)
            if record is None or record.status in TERMINAL_STATUSES:
                # read once more: its last events were committed before its status
                finished = True
                continue
            await self._watch.wait(_WAIT_SECONDS)
        self._ended = True
        self.close()
        return None

    def close(self) -> None:
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.__exit__(None, None, None)  # unregisters it


async def follow_events(
    runner: Runner, response_id: str, after: int
) -> AsyncIterator[list[EventRow]]:
    """Batches of events with ``seq > after`` until the response's stream ends."""
    follower = _Follower(runner, response_id, after)
    try:
        while (rows := await follower.next_batch()) is not None:
            yield rows
    finally:
        follower.close()


def _frames(rows: list[EventRow]) -> bytes:
    return b"".join(
        b"event: " + event_type(row.data) + b"\ndata: " + row.data + b"\n\n" for row in rows
    )


_DONE = b"data: [DONE]\n\n"


async def _ended(runner: Runner, response_id: str) -> bool:
    """Whether the response has ended, so its stream closes with ``[DONE]``."""
    record = await runner.engine.store.get_response(response_id)
    return record is None or record.status in TERMINAL_STATUSES


async def sse_frames(runner: Runner, response_id: str, after: int) -> AsyncGenerator[bytes, None]:
    """The SSE body; ``[DONE]`` only once the response has ended.

    A stream that stops while its response goes on (the process drains) just
    closes, so the client knows to resume it with ``starting_after``.
    """
    async for rows in follow_events(runner, response_id, after):
        yield _frames(rows)
    if await _ended(runner, response_id):
        yield _DONE


class Counter(Protocol):
    """What counts open streams (a Prometheus gauge)."""

    def inc(self) -> None: ...

    def dec(self) -> None: ...


class EventStream(Response):
    """The SSE response of a response's events, counted in ``open_streams`` while
    they flow (the body of :func:`sse_frames`, without its generators).

    The count drops before the end of the body is sent, so a client that saw
    the end never sees the stream counted.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        runner: Runner,
        response_id: str,
        after: int,
        *,
        headers: Mapping[str, str] | None = None,
        open_streams: Counter | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._runner = runner
        self._response_id = response_id
        self._follower = _Follower(runner, response_id, after)
        self._open_streams = open_streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if hand_off(scope, self):
            return  # the gateway sends it, once the routing stack is gone
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
            first: list[EventRow] | None = None
            log = _local_log(self._runner, self._response_id)
            if log is not None and log.unstored:
                # a response its run has not stored yet: answer with its first events,
                # so a database that is down gets a 503 rather than a broken stream
                try:
                    first = await self._follower.next_batch()
                except EventLogFailed as exc:
                    if not isinstance(exc.__cause__, StoreError):
                        raise
                    ending = True
                    await store_unavailable()(scope, receive, send)
                    return
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if first:
                await send(
                    {"type": "http.response.body", "body": _frames(first), "more_body": True}
                )
            await self._send_events(send)
            ending = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # the client left: that cancellation is this stream's own, any other goes on
            if not left or streaming.uncancel() > 0:
                raise
        finally:
            ending = True
            listener.cancel()
            self._follower.close()
            await asyncio.wait((listener,))
            if not listener.cancelled():
                listener.exception()  # retrieved: a receive that failed ended the stream

    async def _send_events(self, send: Send) -> None:
        counter = self._open_streams
        if counter is not None:
            counter.inc()
        try:
            while (rows := await self._follower.next_batch()) is not None:
                await send({"type": "http.response.body", "body": _frames(rows), "more_body": True})
            if await _ended(self._runner, self._response_id):
                await send({"type": "http.response.body", "body": _DONE, "more_body": True})
        finally:
            if counter is not None:
                counter.dec()
