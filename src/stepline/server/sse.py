"""Read a response's event log as Server-Sent Events, from any sequence number.

The same reader serves a live stream, a resumed stream (``starting_after``)
and a replay of a finished response: older events come from the store, then
the in-memory log of a loop running in this process is followed live. A
response running in another process (or taken over by one while it was
followed here) is followed through the store, woken by the store's event
notifications (LISTEN/NOTIFY on PostgreSQL).

Each event is one SSE block (``event:`` equal to the JSON ``type``, then one
``data:`` line) written whole; events that are ready together are written
together. The stream ends after the terminal event with ``data: [DONE]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from stepline.errors import LeaseLost
from stepline.protocol.events import TERMINAL_EVENT_TYPES, event_type
from stepline.server.runner import Runner
from stepline.store.base import TERMINAL_STATUSES, EventRow

__all__ = ["follow_events", "sse_frames"]

_PAGE = 1000
#: the longest a follower of another process waits without a notification
_WAIT_SECONDS = 1.0
_TERMINAL = frozenset(name.encode() for name in TERMINAL_EVENT_TYPES)


async def _stored(
    runner: Runner, response_id: str, after: int, until: int
) -> AsyncIterator[list[EventRow]]:
    """Stored rows with ``after < seq < until``."""
    store = runner.engine.store
    while after + 1 < until:
        rows = await store.read_events(
            response_id, after=after, limit=min(_PAGE, until - after - 1)
        )
        if not rows:
            return
        yield rows
        after = rows[-1].seq


async def follow_events(
    runner: Runner, response_id: str, after: int
) -> AsyncIterator[list[EventRow]]:
    """Batches of events with ``seq > after`` until the response's stream ends."""
    store = runner.engine.store
    finished = False
    with store.watch_events(response_id) as watch:
        while True:
            log = runner.logs.get(response_id)
            if log is not None and not isinstance(log.failure, LeaseLost):
                async for rows in _stored(runner, response_id, after, log.first_seq):
                    yield rows
                    after = rows[-1].seq
                try:
                    async for rows in log.follow(after):
                        yield rows
                        after = rows[-1].seq
                except LeaseLost:
                    continue  # another process runs it now: follow it through the store
                return
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
            # the loop runs in another process (or awaits a claim): wait for its events
            await watch.wait(_WAIT_SECONDS)


def _frame(row: EventRow) -> bytes:
    return b"event: " + event_type(row.data) + b"\ndata: " + row.data + b"\n\n"


async def sse_frames(runner: Runner, response_id: str, after: int) -> AsyncIterator[bytes]:
    """The SSE body; ``[DONE]`` only once the response has ended.

    A stream that stops while its response goes on (the process drains) just
    closes, so the client knows to resume it with ``starting_after``.
    """
    async for rows in follow_events(runner, response_id, after):
        yield b"".join(_frame(row) for row in rows)
    record = await runner.engine.store.get_response(response_id)
    if record is None or record.status in TERMINAL_STATUSES:
        yield b"data: [DONE]\n\n"
