"""The SSE response: whole bodies, a client that leaves, a server that stops.

The response runs as an ASGI app against a receive that says when the client
leaves and a send that records every message; the events come from a real
event log over a :class:`~stepline.store._memory.MemoryStore`.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.types import Message

from stepline._engine.event_log import EventLog, EventWriter
from stepline._server.runner import Runner
from stepline._server.sse import EventStream
from stepline.store._base import EventRow, ResponseRecord
from stepline.store._memory import MemoryStore

RESPONSE = "resp_stream"

pytestmark = pytest.mark.timeout(10)


class Gauge:
    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


def _row(seq: int, type_: str = "response.output_text.delta") -> EventRow:
    data = b'{"type":"%s","sequence_number":%d}' % (type_.encode(), seq)
    return EventRow(response_id=RESPONSE, seq=seq, data=data)


def _frame(row: EventRow) -> bytes:
    type_ = row.data.split(b'"')[3]
    return b"event: " + type_ + b"\ndata: " + row.data + b"\n\n"


async def _setup(status: str = "in_progress") -> tuple[Runner, EventLog, EventWriter]:
    store = MemoryStore()
    record = ResponseRecord(id=RESPONSE, created_at=1.0, status=status, model="m", body={})
    await store.create_response(record)
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, window=1)
    runner = cast(
        Runner, SimpleNamespace(logs={RESPONSE: log}, engine=SimpleNamespace(store=store))
    )
    return runner, log, writer


class Client:
    """Records what the response sends; ``leave`` makes the next receive a disconnect."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.got_body = asyncio.Event()
        self._left = asyncio.Event()

    def leave(self) -> None:
        self._left.set()

    async def receive(self) -> Message:
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.got_body.set()

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def _scope() -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


async def test_a_finished_log_is_sent_whole_then_done() -> None:
    runner, log, writer = await _setup()
    rows = [_row(0, "response.created"), *[_row(seq) for seq in range(1, 6)]]
    for row in rows:
        log.append(row)
    await log.wait_durable()
    await runner.engine.store.finish_response(
        RESPONSE, status="completed", result={}, completed_at=2.0
    )
    log.close()
    client, gauge = Client(), Gauge()
    stream = EventStream(runner, RESPONSE, -1, open_streams=gauge)
    await stream(_scope(), client.receive, client.send)
    assert client.sent[0]["type"] == "http.response.start"
    assert b"".join(client.bodies()) == b"".join(map(_frame, rows)) + b"data: [DONE]\n\n"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert gauge.value == 0
    await writer.aclose()


async def test_a_client_that_leaves_ends_its_stream_quietly_and_nothing_else() -> None:
    runner, log, writer = await _setup()
    log.append(_row(0, "response.created"))
    client, gauge = Client(), Gauge()
    stream = EventStream(runner, RESPONSE, -1, open_streams=gauge)
    serving = asyncio.ensure_future(stream(_scope(), client.receive, client.send))
    await client.got_body.wait()
    assert gauge.value == 1
    client.leave()
    await serving  # returns: the client's leaving is no error of the server's
    assert client.bodies() == [_frame(_row(0, "response.created"))]
    assert gauge.value == 0
    # the loop goes on: its log takes more events, stored as before
    log.append(_row(1))
    await log.wait_durable()
    assert [r.seq for r in await runner.engine.store.read_events(RESPONSE, after=-1, limit=9)] == [
        0,
        1,
    ]
    await writer.aclose()


async def test_a_server_that_stops_a_stream_sees_its_cancellation_through() -> None:
    runner, log, writer = await _setup()
    log.append(_row(0, "response.created"))
    client, gauge = Client(), Gauge()
    stream = EventStream(runner, RESPONSE, -1, open_streams=gauge)
    serving = asyncio.ensure_future(stream(_scope(), client.receive, client.send))
    await client.got_body.wait()
    # the server cancels the stream while the client leaves: the cancellation is not
    # mistaken for the client's own and swallowed
    client.leave()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert gauge.value == 0
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert all(t.done() or "listen" not in repr(t.get_coro()) for t in tasks)
    await writer.aclose()
