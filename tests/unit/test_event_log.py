"""The event log and its writer: readers see only durable rows, failures reach them.

The writer runs over a real :class:`~stepline.store.memory.MemoryStore` whose
``append_events`` can be held at a gate (the write is in progress) or made to
fail once; nothing here sleeps to order things: each step waits for what the
other side did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from stepline.engine.event_log import EventLog, EventLogFailed, EventWriter
from stepline.engine.steps import NewStep, StepKind, StepState
from stepline.errors import LeaseLost, StoreError
from stepline.store.base import Appended, EventRow, ResponseEnd, ResponseRecord, StepEnd
from stepline.store.memory import MemoryStore

RESPONSE = "resp_log"


class GatedStore(MemoryStore):
    """A MemoryStore whose writes wait at ``gate`` and can fail once with ``failure``."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: Exception | None = None

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        self.entered.set()
        await self.gate.wait()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        return await super().append_events(rows, ends=ends, owner=owner)


def _row(seq: int) -> EventRow:
    return EventRow(response_id=RESPONSE, seq=seq, data=b'{"type":"response.in_progress"}')


async def _stored(owner: str | None = None) -> GatedStore:
    store = GatedStore()
    await store.create_response(
        ResponseRecord(
            id=RESPONSE,
            created_at=1.0,
            status="in_progress",
            model="m",
            body={},
            owner=owner,
            lease_expires_at=None if owner is None else 2e9,
        )
    )
    return store


async def test_a_reader_never_sees_a_row_before_it_is_durable() -> None:
    store = await _stored()
    store.gate.clear()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer)
    log.append(_row(0))
    follower = log.follow(-1)

    async def first_batch() -> tuple[list[int], int]:
        batch = await anext(follower)
        return [row.seq for row in batch], log.durable

    reading = asyncio.ensure_future(first_batch())
    await store.entered.wait()  # the write is under way; the reader has run meanwhile
    assert not reading.done()
    store.gate.set()
    assert await reading == ([0], 0)
    assert [row.seq for row in await store.read_events(RESPONSE, after=-1, limit=10)] == [0]
    await writer.aclose()


async def test_a_failure_other_than_storage_fails_readers_and_is_not_retried() -> None:
    store = await _stored()
    store.failure = TypeError("cannot serialise")
    writer = EventWriter(store, retry_delay=0.001)
    log = EventLog(RESPONSE, writer)
    log.append(_row(0))
    with pytest.raises(EventLogFailed):
        await log.wait_durable()
    with pytest.raises(EventLogFailed):
        async for _batch in log.follow(-1):
            pass
    # the write was given up, not retried: the store has none of it
    assert await store.read_events(RESPONSE, after=-1, limit=10) == []
    await writer.aclose()


async def test_a_storage_failure_is_retried_until_the_rows_are_stored() -> None:
    store = await _stored()
    store.failure = StoreError("database is down")
    writer = EventWriter(store, retry_delay=0.001)
    log = EventLog(RESPONSE, writer)
    log.append(_row(0))
    await log.wait_durable()
    assert log.durable == 0
    assert [row.seq for row in await store.read_events(RESPONSE, after=-1, limit=10)] == [0]
    await writer.aclose()


async def test_a_writer_without_the_lease_stores_nothing_and_says_so() -> None:
    store = await _stored(owner="other-process")
    [step] = await store.record_steps(
        RESPONSE, scope=None, steps=[NewStep(kind=StepKind.MODEL_CALL, request={})], start=True
    )
    writer = EventWriter(store, owner="this-process")
    log = EventLog(RESPONSE, writer)
    end = StepEnd(response_id=RESPONSE, step_id=step.id, state=StepState.COMPLETED, response={})
    with pytest.raises(LeaseLost):
        await log.commit([_row(0)], end)
    # the log is failed with the lost lease: its readers stop instead of waiting
    assert isinstance(log.failure, LeaseLost)
    with pytest.raises(LeaseLost):
        await log.wait_durable()
    assert await store.read_events(RESPONSE, after=-1, limit=10) == []
    [kept] = await store.load_steps(RESPONSE)
    assert kept.state is StepState.PROCESSING
    await writer.aclose()
