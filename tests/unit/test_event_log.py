"""The event log and its writer: readers see only durable rows, failures reach them.

The writer runs over a real :class:`~stepline.store._memory.MemoryStore` whose
``append_events`` can be held at a gate (the write is in progress) or made to
fail once; nothing here sleeps to order things: each step waits for what the
other side did.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence

import pytest

from stepline._engine.creation import Unstored
from stepline._engine.event_log import EventLog, EventLogFailed, EventWriter
from stepline._steps import NewStep, StepKind, StepState
from stepline.errors import LeaseLost, StoreError
from stepline.store._base import Appended, EventRow, ResponseEnd, ResponseRecord, StepEnd
from stepline.store._memory import MemoryStore

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


def _numbered(seq: int) -> EventRow:
    return EventRow(response_id=RESPONSE, seq=seq, data=b'{"type":"e","sequence_number":%d}' % seq)


async def _all(log: EventLog, after: int) -> list[EventRow]:
    return [row async for batch in log.follow(after) for row in batch]


async def _commit_one_by_one(log: EventLog, seqs: range) -> None:
    for seq in seqs:
        log.append(_numbered(seq))
        await log.wait_durable()


async def test_memory_keeps_only_the_window_and_the_newest_commit() -> None:
    store = await _stored()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, window=3)
    await _commit_one_by_one(log, range(20))
    # rows 0..19 each committed alone: the newest commit (19) and the 3 before it
    assert [row.seq for row in log.rows] == [16, 17, 18, 19]
    assert log.start == 16
    # rows appended together are stored in one write; they stay whole for the
    # followers it wakes
    for seq in range(20, 30):
        log.append(_numbered(seq))
    await log.wait_durable()
    assert [row.seq for row in log.rows] == list(range(17, 30))
    await writer.aclose()


async def test_a_follower_behind_the_window_gets_every_event_in_order() -> None:
    store = await _stored()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, window=2)
    expected = [_numbered(seq) for seq in range(40)]
    await _commit_one_by_one(log, range(25))
    # one follower from the start, one from the middle, one resuming late; all
    # read from the store, then from memory, while the log goes on
    followers = [asyncio.ensure_future(_all(log, after)) for after in (-1, 9, 21)]
    await _commit_one_by_one(log, range(25, 40))
    log.close()
    got = await asyncio.wait_for(asyncio.gather(*followers), 5)
    assert got == [expected, expected[10:], expected[22:]]
    await writer.aclose()


async def test_a_follower_that_stalls_falls_behind_and_catches_up_from_the_store() -> None:
    store = await _stored()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, window=1)
    follower = log.follow(-1)
    await _commit_one_by_one(log, range(3))
    seen = [row async for row in _first_batch(follower)]
    # the follower stops reading; the log moves far past its position meanwhile
    await _commit_one_by_one(log, range(3, 30))
    assert log.start > seen[-1].seq + 1
    log.close()
    async for batch in follower:
        seen.extend(batch)
    assert seen == [_numbered(seq) for seq in range(30)]
    await writer.aclose()


async def _first_batch(follower: AsyncIterator[list[EventRow]]) -> AsyncIterator[EventRow]:
    for row in await asyncio.wait_for(anext(follower), 5):
        yield row


async def test_a_resumed_log_is_followed_from_the_rows_stored_before_it() -> None:
    store = await _stored()
    await store.append_events([_numbered(seq) for seq in range(5)])
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, first_seq=5, window=2)
    await _commit_one_by_one(log, range(5, 15))
    log.close()
    got = await asyncio.wait_for(_all(log, -1), 5)
    assert got == [_numbered(seq) for seq in range(15)]
    assert await asyncio.wait_for(_all(log, 3), 5) == got[4:]
    await writer.aclose()


class CountingStore(GatedStore):
    """Records what each ``append_events`` call wrote: its rows' seqs and its ends."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[list[int], list[str]]] = []

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        kinds = ["step" if isinstance(end, StepEnd) else "response" for end in ends]
        self.writes.append(([row.seq for row in rows], kinds))
        return await super().append_events(rows, ends=ends, owner=owner)


async def _counting() -> tuple[CountingStore, str]:
    store = CountingStore()
    await store.create_response(
        ResponseRecord(id=RESPONSE, created_at=1.0, status="in_progress", model="m", body={})
    )
    [step] = await store.record_steps(
        RESPONSE, scope=None, steps=[NewStep(kind=StepKind.MODEL_CALL, request={})], start=True
    )
    return store, step.id


async def test_a_held_log_stores_its_rows_with_the_next_end_in_one_write() -> None:
    store, step_id = await _counting()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, held=True)

    for seq in range(3):
        log.append(_row(seq))
    # the writer runs a batch meanwhile (another response's row): the held rows stay out
    other = EventLog("resp_other", writer)
    other.append(EventRow(response_id="resp_other", seq=0, data=b"{}"))
    await other.wait_durable()
    end = StepEnd(response_id=RESPONSE, step_id=step_id, state=StepState.COMPLETED)
    await log.commit([_row(3)], end)
    log.append(_row(4))
    await log.commit(
        [], ResponseEnd(response_id=RESPONSE, status="completed", result={}, completed_at=2.0)
    )
    await writer.aclose()

    assert store.writes == [([0], []), ([0, 1, 2, 3], ["step"]), ([4], ["response"])]
    assert [row.seq for row in await store.read_events(RESPONSE, after=-1, limit=10)] == [
        0,
        1,
        2,
        3,
        4,
    ]


async def test_a_held_log_that_is_followed_sends_its_rows_as_they_come() -> None:
    store, _ = await _counting()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, held=True)
    log.append(_row(0))
    follower = log.follow(-1)

    first = await anext(follower)  # the follower sends what was held, and waits for it
    log.append(_row(1))
    second = await anext(follower)
    log.close()
    await writer.aclose()

    assert ([row.seq for row in first], [row.seq for row in second]) == ([0], [1])
    assert all(ends == [] for _, ends in store.writes)


async def test_a_held_log_waited_on_or_closed_stores_what_it_held() -> None:
    store, _ = await _counting()
    writer = EventWriter(store)
    waited = EventLog(RESPONSE, writer, held=True)
    waited.append(_row(0))
    await waited.wait_durable()
    closed = EventLog(RESPONSE, writer, first_seq=1, held=True)
    closed.append(_row(1))
    closed.close()
    await writer.aclose()

    assert [row.seq for row in await store.read_events(RESPONSE, after=-1, limit=10)] == [0, 1]


def _record() -> ResponseRecord:
    return ResponseRecord(id=RESPONSE, created_at=1.0, status="in_progress", model="m", body={})


async def test_an_unstored_log_shows_nothing_until_its_response_is_stored_with_its_rows() -> None:
    """A new response's first events wait, followed or not, and go with its record and
    first step in one write; then the log goes on as any other."""
    store = GatedStore()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, unstored=True)
    log.append(_row(0))
    log.append(_row(1))
    follower = log.follow(-1)

    async def first_batch() -> list[EventRow]:
        return await anext(follower)

    reading = asyncio.create_task(first_batch())
    # the writer runs a batch meanwhile (another response's row): these rows stay out
    other = EventLog("resp_other", writer)
    other.append(EventRow(response_id="resp_other", seq=0, data=b"{}"))
    await other.wait_durable()
    assert not reading.done()
    assert await store.get_response(RESPONSE) is None

    [step] = await Unstored(record=_record(), log=log).store(
        store, [NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 1})]
    )
    first = await reading
    log.append(_row(2))
    second = await anext(follower)
    log.close()
    await writer.aclose()

    assert ([row.seq for row in first], [row.seq for row in second]) == ([0, 1], [2])
    assert [row.seq for row in await store.read_events(RESPONSE, after=-1, limit=10)] == [0, 1, 2]
    assert [s.id for s in await store.load_steps(RESPONSE)] == [step.id]
    assert step.state is StepState.PROCESSING


async def test_an_unstored_log_closed_before_its_response_was_stored_fails_its_readers() -> None:
    store = GatedStore()
    writer = EventWriter(store)
    log = EventLog(RESPONSE, writer, unstored=True)
    log.append(_row(0))
    follower = log.follow(-1)

    log.close()

    with pytest.raises(EventLogFailed) as failed:
        await anext(follower)
    assert "never stored" in str(failed.value.__cause__)
    await writer.aclose()
    assert await store.read_events(RESPONSE, after=-1, limit=10) == []


async def test_a_response_stored_by_its_run_holds_its_lease_from_then() -> None:
    store = GatedStore()
    record = dataclasses.replace(_record(), created_at=100.0, owner="me", lease_expires_at=115.0)

    await Unstored(record=record, log=None, clock=lambda: 110.0).store(store)

    stored = await store.get_response(RESPONSE)
    assert stored is not None and (stored.owner, stored.lease_expires_at) == ("me", 125.0)
