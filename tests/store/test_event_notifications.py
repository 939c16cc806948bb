"""On PostgreSQL, stored events wake the readers of other processes through NOTIFY:
every response whose events a transaction stored is named, in payloads under
PostgreSQL's 8000-byte limit, and a fenced response is not named."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stepline._steps import NewStep, StepKind, StepState
from stepline.store import StepStore
from stepline.store._base import EventRow, ResponseRecord, StepEnd
from stepline.store._notify import CHANNEL
from tests._backends import postgres_url, store_backend

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StepStore]:
    async with store_backend("postgres", tmp_path) as opened:
        yield opened


class Listener:
    """The payloads a LISTENing connection received, until ``expected`` ids were named."""

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.payloads: list[str] = []
        self.all_named = asyncio.Event()

    def named(self) -> set[str]:
        return {name for payload in self.payloads for name in payload.split(",")}

    def receive(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self.payloads.append(payload)
        if self.expected <= self.named():
            self.all_named.set()


@pytest.fixture
async def connection() -> AsyncIterator[asyncpg.Connection]:
    url = postgres_url().replace("postgresql+asyncpg://", "postgresql://")
    opened = await asyncpg.connect(url)
    try:
        yield opened
    finally:
        await opened.close()


def event(response_id: str, seq: int = 0) -> EventRow:
    return EventRow(response_id=response_id, seq=seq, data=b"{}", step_id=None)


async def test_events_of_hundreds_of_responses_name_each_in_payloads_under_the_limit(
    store: StepStore, connection: asyncpg.Connection
) -> None:
    ids = {f"resp_{index:032x}" for index in range(450)}
    listener = Listener(ids)
    await connection.add_listener(CHANNEL, listener.receive)

    await store.append_events([event(response_id) for response_id in sorted(ids)])
    async with asyncio.timeout(10):
        await listener.all_named.wait()

    ours = [p for p in listener.payloads if set(p.split(",")) <= ids]
    assert sorted(name for payload in ours for name in payload.split(",")) == sorted(ids)
    assert all(len(payload.encode()) < 8000 for payload in ours)
    assert len(ours) == 3  # 450 ids of 37 characters: a few payloads, not one per response


async def test_a_fenced_response_is_not_named(
    store: StepStore, connection: asyncpg.Connection
) -> None:
    for response_id in ("resp_held", "resp_taken"):
        await store.create_response(
            ResponseRecord(
                id=response_id,
                created_at=1.0,
                status="in_progress",
                model="m",
                body={},
                owner="worker-a",
                lease_expires_at=100.0,
            )
        )
    await store.renew_leases("worker-a", ["resp_held"], expires_at=2e9)
    assert await store.claim_expired("worker-b", now=200.0, expires_at=2e9, limit=10) == [
        "resp_taken"
    ]
    listener = Listener({"resp_held"})
    await connection.add_listener(CHANNEL, listener.receive)

    appended = await store.append_events(
        [event("resp_held"), event("resp_taken")], owner="worker-a"
    )
    async with asyncio.timeout(10):
        await listener.all_named.wait()

    assert appended.fenced == {"resp_taken"}
    assert "resp_taken" not in listener.named()


async def test_events_stored_with_an_end_name_their_response_too(
    store: StepStore, connection: asyncpg.Connection
) -> None:
    await store.create_response(
        ResponseRecord(id="resp_ended", created_at=1.0, status="in_progress", model="m", body={})
    )
    [step] = await store.record_steps(
        "resp_ended", scope=None, steps=[NewStep(kind=StepKind.MODEL_CALL, request={})], start=True
    )
    listener = Listener({"resp_ended"})
    await connection.add_listener(CHANNEL, listener.receive)

    await store.append_events(
        [event("resp_ended")],
        ends=[StepEnd(response_id="resp_ended", step_id=step.id, state=StepState.COMPLETED)],
    )
    async with asyncio.timeout(10):
        await listener.all_named.wait()

    assert await store.read_events("resp_ended", after=-1, limit=10) == [event("resp_ended")]
