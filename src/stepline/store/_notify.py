"""Wake readers when new events of a response are stored, in this process or another.

A reader that follows a response running elsewhere registers a watch
*before* it reads, reads what is stored, and only then waits: a wake-up that
arrives between the read and the wait is kept, never lost. A wait also ends
after its timeout, so a missed notification costs latency, never a hang.

* :class:`EventNotifier` wakes the watches of this process; every store
  notifies it after it commits events.
* :class:`PgListener` carries notifications between processes: writers
  ``NOTIFY stepline_events, '<response id>,<response id>...'`` (a few per
  transaction) in the transaction that stores the events (PostgreSQL
  delivers them on commit), and each process keeps one
  connection that ``LISTEN``s and feeds its notifier, reconnecting when the
  connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["CHANNEL", "EventNotifier", "EventWatch", "PgListener"]

logger = logging.getLogger(__name__)

#: the PostgreSQL channel that carries response ids with new events
CHANNEL = "stepline_events"


class EventWatch:
    """One reader's interest in one response; use as a context manager."""

    def __init__(self, notifier: EventNotifier, response_id: str) -> None:
        self._notifier = notifier
        self.response_id = response_id
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, at_most: float) -> None:
        """Return once woken since the last wait, or after ``at_most`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), at_most)
        self._woken.clear()

    def __enter__(self) -> EventWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._notifier.unwatch(self)


class EventNotifier:
    """The watches of this process, by response id."""

    def __init__(self) -> None:
        self._watches: dict[str, set[EventWatch]] = {}

    def watch(self, response_id: str) -> EventWatch:
        watch = EventWatch(self, response_id)
        self._watches.setdefault(response_id, set()).add(watch)
        return watch

    def unwatch(self, watch: EventWatch) -> None:
        watches = self._watches.get(watch.response_id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.response_id]

    def notify(self, response_ids: Iterable[str]) -> None:
        for response_id in response_ids:
            for watch in self._watches.get(response_id, ()):
                watch.wake()


class PgListener:
    """One LISTEN connection per process that feeds an :class:`EventNotifier`."""

    def __init__(self, dsn: str, notifier: EventNotifier, *, retry_delay: float = 1.0) -> None:
        self._dsn = dsn
        self._notifier = notifier
        self._retry_delay = retry_delay
        self._task: asyncio.Task[None] | None = None
        #: set while the LISTEN is in place
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen(), name="stepline-pg-listener"
            )

    def _deliver(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._notifier.notify(payload.split(","))

    async def _listen(self) -> None:
        while True:
            lost = asyncio.Event()
            import asyncpg  # PostgreSQL only: never loaded on SQLite

            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                logger.warning("LISTEN connection failed (%s); retrying", exc)
                await asyncio.sleep(self._retry_delay)
                continue
            try:
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._deliver)
                self.listening.set()
                await lost.wait()
                logger.warning("LISTEN connection lost; reconnecting")
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await connection.close(timeout=2)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
