"""The event log of a running response, and the writer that makes it durable.

The loop never writes to a socket: it appends events here and goes on.
Readers (SSE routes, the plain route's waiter) follow the log at their own
pace, so a slow or vanished client can neither stall the loop nor grow
memory beyond the response's own events.

Invariants:

* A reader only ever sees *durable* events: an event is handed to followers
  after the store has committed it, so any event a client saw can be
  replayed later, from this process or another.
* :class:`EventWriter` is a process-wide group commit: whatever events of any
  responses are pending when a write starts go in that one transaction;
  appending never waits for the database.
* Rows leave in sequence order per response; ``durable`` only grows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from stepline.store.base import EventRow, StepStore

__all__ = ["EventLog", "EventWriter"]

logger = logging.getLogger(__name__)


class EventLog:
    """The in-memory tail of one response's event log, from ``first_seq`` on."""

    def __init__(self, response_id: str, writer: EventWriter, *, first_seq: int = 0) -> None:
        self.response_id = response_id
        self.first_seq = first_seq
        self.rows: list[EventRow] = []
        self.appended = first_seq - 1
        self.durable = first_seq - 1
        self.closed = False
        self._writer = writer
        self._changed = asyncio.Event()

    def append(self, row: EventRow) -> None:
        self.rows.append(row)
        self.appended = row.seq
        self._writer.submit(self, row)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def made_durable(self, seq: int) -> None:
        if seq > self.durable:
            self.durable = seq
            self._notify()

    def close(self) -> None:
        """No more events will be appended; followers end once they read the rest."""
        self.closed = True
        self._notify()

    async def wait_durable(self) -> None:
        while self.durable < self.appended:
            await self._changed.wait()

    async def follow(self, after: int) -> AsyncIterator[list[EventRow]]:
        """Batches of durable rows with ``seq > after``, until the log closes.

        ``after`` must be at least ``first_seq - 1``; older rows are the store's.
        """
        position = max(after + 1, self.first_seq)
        while True:
            changed = self._changed
            if position <= self.durable:
                start = position - self.first_seq
                end = self.durable - self.first_seq + 1
                position = self.durable + 1
                yield self.rows[start:end]
                continue
            if self.closed and position > self.appended:
                return
            await changed.wait()


class EventWriter:
    """Commits pending events of every response in batches, one transaction each."""

    def __init__(self, store: StepStore, *, retry_delay: float = 0.2) -> None:
        self._store = store
        self._pending: list[tuple[EventLog, EventRow]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = retry_delay
        self._closing = False

    def submit(self, log: EventLog, row: EventRow) -> None:
        self._pending.append((log, row))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="stepline-event-writer"
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit(batch)
                newest: dict[EventLog, int] = {}
                for log, row in batch:
                    newest[log] = row.seq
                for log, seq in newest.items():
                    log.made_durable(seq)
            if self._closing and not self._pending:
                return

    async def _commit(self, batch: list[tuple[EventLog, EventRow]]) -> None:
        rows = [row for _, row in batch]
        delay = self._retry_delay
        while True:
            try:
                await self._store.append_events(rows)
                return
            except Exception:
                # The database is down or busy: keep the events and try again;
                # readers wait, the loop does not.
                logger.exception("writing %d events failed; retrying in %.1fs", len(rows), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def aclose(self) -> None:
        """Commit what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
