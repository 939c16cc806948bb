"""The event log of a running response, and the writer that makes it durable.

The loop never writes to a socket: it appends events here and goes on.
Readers (SSE routes, the plain route's waiter) follow the log at their own
pace, so a slow or vanished client can neither stall the loop nor grow
memory.

Invariants:

* A reader only ever sees *durable* events: an event is handed to followers
  after the store has committed it, so any event a client saw can be
  replayed later, from this process or another.
* :class:`EventWriter` is a process-wide group commit: whatever events of any
  responses are pending when a write starts go in that one transaction;
  appending never waits for the database.
* Rows leave in sequence order per response; ``durable`` only grows.
* :meth:`EventLog.commit` stores a step's or the response's end together
  with the events that announce it, in one transaction: a reader can never
  see an announcement whose outcome a crash could still lose.
* A writer with an ``owner`` writes only for the responses whose lease it
  holds (the store fences each transaction): the log of a response another
  process took over fails with :class:`~stepline.errors.LeaseLost`, and no
  row of it after the takeover is ever stored or shown.
* Only a storage failure (:class:`~stepline.errors.StoreError`: the
  database is down or busy) is retried; any other failure of a write fails
  the writes that waited on it and closes their logs with that error, so no
  reader waits forever for rows that will never come.
* A *held* log (a plain request's, whose client reads only the end) sends
  its rows with its next commit or durability wait instead of as they come:
  a step costs one transaction, its events and its end together. A follower,
  a commit, a wait or the close sends what is held, and a followed log holds
  nothing from then on.
* An *unstored* log (a new response its run stores itself, with its first
  steps) holds every row, followed or not, until :meth:`EventLog.take_unstored`
  hands them to that write and :meth:`EventLog.stored` marks them durable;
  a follower waits for them like any other row. Closed unstored (the record
  was never written), it fails: there is nothing its followers could read.
* Memory is bounded per response, not per event: the log keeps the rows not
  yet durable, those of the newest commit, and a window of older ones.
  Only durable rows leave memory, so a follower that falls behind the
  window reads them back from the store, in the same order, and then
  follows the log again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from stepline.errors import LeaseLost, StoreError
from stepline.store._base import EndResult, EventRow, ResponseEnd, StepEnd, StepStore

__all__ = ["WINDOW", "EventLog", "EventLogFailed", "EventWriter"]


class EventLogFailed(Exception):
    """The log's events could not be stored (not a storage outage): readers stop here."""


@dataclass(eq=False, kw_only=True)
class _Unit:
    """Rows and ends that commit together; ``done`` gets the last end's result."""

    log: EventLog
    rows: Sequence[EventRow]
    ends: Sequence[StepEnd | ResponseEnd]
    done: asyncio.Future[EndResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


logger = logging.getLogger(__name__)


def _lease_lost(response_id: str) -> LeaseLost:
    return LeaseLost(f"response {response_id} is run by another process now")


#: durable rows a log keeps beyond those of its newest commit; a follower further
#: behind reads from the store (a live follower reads each commit as it lands)
WINDOW = 4
#: rows read from the store at a time by a follower behind the window
_PAGE = 1000


class EventLog:
    """The in-memory tail of one response's event log, from ``first_seq`` on.

    ``rows`` holds the rows from ``start`` on; those before it (and those
    before ``first_seq``, from an earlier run of the response) are the store's.
    """

    def __init__(
        self,
        response_id: str,
        writer: EventWriter,
        *,
        first_seq: int = 0,
        window: int = WINDOW,
        held: bool = False,
        unstored: bool = False,
    ) -> None:
        self.response_id = response_id
        self.first_seq = first_seq
        self.start = first_seq
        self.rows: list[EventRow] = []
        self.appended = first_seq - 1
        self.durable = first_seq - 1
        self.closed = False
        self.failure: BaseException | None = None
        self._writer = writer
        self._window = window
        self._held = held
        #: the response is not stored yet: nothing goes to the writer (see the module)
        self.unstored = unstored
        #: rows of a held (or unstored) log not yet handed to the writer
        self._unsent: list[EventRow] = []
        # futures of the tasks waiting for a change, None while nobody waits: an
        # idle log costs no asyncio.Event (a deque of its own) per response
        self._waiters: list[asyncio.Future[None]] | None = None

    def append(self, row: EventRow) -> None:
        self.rows.append(row)
        self.appended = row.seq
        if self._held or self.unstored:
            self._unsent.append(row)
        else:
            self._writer.submit(self, row)

    def _send_held(self, *, stop_holding: bool = False) -> None:
        """Hand the held rows to the writer (and, with ``stop_holding``, hold no more);
        an unstored log's stay until the write that stores the response takes them."""
        if stop_holding:
            self._held = False
        if self.unstored:
            return
        unsent, self._unsent = self._unsent, []
        for row in unsent:
            self._writer.submit(self, row)

    def take_unstored(self) -> list[EventRow]:
        """The rows appended so far, for the write that stores the response with them."""
        if not self.unstored:
            raise RuntimeError(f"the response {self.response_id} is stored already")
        unsent, self._unsent = self._unsent, []
        return unsent

    def stored(self, rows: Sequence[EventRow]) -> None:
        """The response is stored, with ``rows`` (from :meth:`take_unstored`): they are
        durable, and the log goes on as a stored response's (held, or sent as it goes)."""
        self.unstored = False
        if rows:
            self.made_durable(rows[-1].seq)
        if not self._held:
            self._send_held()

    def commit(
        self, rows: Sequence[EventRow], *ends: StepEnd | ResponseEnd
    ) -> asyncio.Future[EndResult]:
        """Append ``rows`` and store ``ends`` with them, atomically; the last end's result.

        Submitted at once (nothing else can slip in between); every row
        appended before is committed first or in the same transaction, so the
        log stays durable in sequence order. Cancelling the wait does not stop
        the write.
        """
        if self.unstored:
            raise RuntimeError(f"the response {self.response_id} is not stored yet")
        for row in rows:
            self.rows.append(row)
            self.appended = row.seq
        if self._unsent:
            rows, self._unsent = [*self._unsent, *rows], []
        unit = _Unit(log=self, rows=rows, ends=ends)
        self._writer.submit_unit(unit)
        return unit.done

    def fail(self, error: BaseException) -> None:
        """Its rows will never be durable: followers raise instead of waiting."""
        self.failure = error
        self.close()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        """Return at the next change: rows made durable, a close, a failure."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        await waiter

    def made_durable(self, seq: int) -> None:
        if seq > self.durable:
            # rows up to the previous commit, beyond the window, are the store's now:
            # this commit's rows stay for the followers it wakes
            keep_from = self.durable + 1 - self._window
            if keep_from > self.start:
                del self.rows[: keep_from - self.start]
                self.start = keep_from
            self.durable = seq
            self._notify()

    def close(self) -> None:
        """No more events will be appended; followers end once they read the rest."""
        if self.unstored and self.failure is None:
            self.failure = EventLogFailed(f"response {self.response_id} was never stored")
        self._send_held(stop_holding=True)
        self.closed = True
        self._notify()

    async def wait_durable(self) -> None:
        if self.unstored:
            raise RuntimeError(f"the response {self.response_id} is not stored yet")
        self._send_held()
        while self.durable < self.appended:
            self._raise_failure()
            await self._changed()

    def _raise_failure(self) -> None:
        if isinstance(self.failure, LeaseLost):
            raise self.failure  # a storage outcome: the loop stops, its new owner goes on
        if self.failure is not None:
            raise EventLogFailed(f"events of {self.response_id} not stored") from self.failure

    async def read(self, position: int) -> list[EventRow] | None:
        """The durable rows from seq ``position`` on, once there are any; None once the
        log is closed and read to its end. Rows before ``start`` come from the store."""
        if self._held:
            self._send_held(stop_holding=True)  # someone follows: rows go out as they come
        while True:
            if position < self.start:
                stored = await self._writer.store.read_events(
                    self.response_id, after=position - 1, limit=min(_PAGE, self.start - position)
                )
                # only what memory no longer holds (the window may have moved meanwhile)
                stored = [row for row in stored if row.seq < self.start]
                if stored:
                    return stored
                position = self.start  # nothing stored below the window (a resumed log's gap)
                continue
            if position <= self.durable:
                return self.rows[position - self.start : self.durable - self.start + 1]
            self._raise_failure()
            if self.closed and position > self.appended:
                return None
            await self._changed()

    async def follow(self, after: int) -> AsyncIterator[list[EventRow]]:
        """Batches of durable rows with ``seq > after``, in order, until the log closes."""
        position = after + 1
        while (batch := await self.read(position)) is not None:
            yield batch
            position = batch[-1].seq + 1


class EventWriter:
    """Commits pending events of every response in batches, one transaction each."""

    def __init__(
        self, store: StepStore, *, owner: str | None = None, retry_delay: float = 0.2
    ) -> None:
        self.store = store
        self._owner = owner
        self._pending: list[tuple[EventLog, EventRow] | _Unit] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retry_delay = retry_delay
        self._closing = False

    def submit(self, log: EventLog, row: EventRow) -> None:
        self._queue((log, row))

    def submit_unit(self, unit: _Unit) -> None:
        self._queue(unit)

    def _queue(self, entry: tuple[EventLog, EventRow] | _Unit) -> None:
        self._pending.append(entry)
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
            if self._closing and not self._pending:
                return

    async def _commit(self, batch: list[tuple[EventLog, EventRow] | _Unit]) -> None:
        rows: list[EventRow] = []
        units: list[_Unit] = []
        newest: dict[EventLog, int] = {}
        touched: set[EventLog] = set()
        for entry in batch:
            if isinstance(entry, _Unit):
                units.append(entry)
                touched.add(entry.log)
                rows.extend(entry.rows)
                if entry.rows:
                    newest[entry.log] = entry.rows[-1].seq
            else:
                log, row = entry
                touched.add(log)
                rows.append(row)
                newest[log] = row.seq
        delay = self._retry_delay
        while True:
            try:
                appended = await self.store.append_events(
                    rows, ends=[end for u in units for end in u.ends], owner=self._owner
                )
                break
            except StoreError:
                # The database is down or busy: keep the events and try again;
                # readers wait, the loop does not.
                logger.exception("writing %d events failed; retrying in %.1fs", len(rows), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception as exc:
                logger.exception("writing %d events failed for good", len(rows))
                for log in touched:
                    log.fail(exc)
                for unit in units:
                    if not unit.done.done():
                        unit.done.set_exception(exc)
                return
        for log in touched:
            if log.response_id not in appended.fenced:
                if log in newest:
                    log.made_durable(newest[log])
            elif log.failure is None:
                logger.warning("response %s is run by another process now", log.response_id)
                log.fail(_lease_lost(log.response_id))
        results = iter(appended.ends)
        for unit in units:
            unit_results = [next(results) for _ in unit.ends]
            if unit.done.done():
                continue
            if unit.log.response_id in appended.fenced:
                unit.done.set_exception(_lease_lost(unit.log.response_id))
            else:
                for end, result in zip(unit.ends[:-1], unit_results, strict=False):
                    if result is None and isinstance(end, StepEnd):
                        logger.warning("step %s was no longer running when it ended", end.step_id)
                unit.done.set_result(unit_results[-1])

    async def aclose(self) -> None:
        """Commit what is pending, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
