"""The retention worker: a server's background sweep of responses past their age.

The config says how long responses are kept (``retention``, and per key in
``[keys.NAME]``); :func:`retention_policy` turns that into the key ids the
store's sweep knows, and :class:`RetentionWorker` runs the sweep
(:func:`stepline.store._retention.purge`) every ``retention_interval`` seconds.

Invariants:

* Off unless the config asks: without any ``retention`` nothing is deleted,
  no task runs, and the sweep's SQL (SQLAlchemy) is never loaded.
* One sweep at a time per process; a sweep goes batch after batch (each its
  own short transaction, queued with the loop's writes) until nothing is
  left, then waits for the next interval.
* A sweep that fails (the database is down) is logged and tried again at the
  next interval; it never ends the server.
* Several processes of a deployment may sweep at once: deletes are
  idempotent, and PostgreSQL hands them disjoint batches.
* Stopping ends the sweep between batches; a batch already writing finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from stepline._config import Settings
from stepline._server.auth import config_key_id
from stepline.errors import StoreError
from stepline.store._retention_values import DEFAULT_BATCH_SIZE, PurgeCounts, RetentionPolicy
from stepline.store._sql import SqlStore

__all__ = ["RetentionWorker", "retention_policy", "retention_worker"]

logger = logging.getLogger(__name__)


def retention_policy(settings: Settings) -> RetentionPolicy:
    """The config's retention, by the key ids responses are stored under.

    A config key's responses carry its id, or its name when they were stored
    before keys had ids; both get the key's ``retention``. Keys created with
    ``stepline keys create`` have no retention of their own: the global one
    applies to them, as to responses without a key."""
    keys: dict[str, float | None] = {}
    for name, key in settings.keys.items():
        if key.retention is None:
            continue
        age = None if key.retention == "off" else key.retention
        keys[config_key_id(key.hash)] = age
        keys[name] = age
    return RetentionPolicy(default=settings.retention, keys=keys)


class RetentionWorker:
    """Sweeps the store every ``interval`` seconds, from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        store: SqlStore,
        policy: RetentionPolicy,
        *,
        interval: float,
        batch_size: int = DEFAULT_BATCH_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.interval = interval
        self.batch_size = batch_size
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        #: callers of :meth:`next_sweep`, told when the next sweep to start has ended
        self._waiting: list[asyncio.Future[PurgeCounts | None]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stepline-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiter in self._waiting:
            waiter.cancel()

    async def sweep(self) -> PurgeCounts:
        """Delete everything past its age now; what was deleted."""
        from stepline.store._retention import purge  # SQLAlchemy loads on the first sweep

        counts = await purge(self.store, self.policy, now=self.clock(), batch_size=self.batch_size)
        if counts.responses:
            logger.info(
                "retention deleted %d responses (%d steps, %d events, %d items)",
                counts.responses,
                counts.steps,
                counts.events,
                counts.items,
            )
        return counts

    async def next_sweep(self) -> PurgeCounts | None:
        """Wait for the next sweep that starts after this call; what it deleted (None:
        it failed). For operators' tools and tests that must know a sweep has run."""
        waiter: asyncio.Future[PurgeCounts | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return await waiter

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            waiting, self._waiting = self._waiting, []
            counts: PurgeCounts | None = None
            try:
                counts = await self.sweep()
            except StoreError as exc:
                logger.warning(
                    "retention sweep failed; trying again in %gs: %s", self.interval, exc
                )
            except Exception:
                logger.exception("retention sweep failed; trying again in %gs", self.interval)
            finally:
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_result(counts)


def retention_worker(settings: Settings, store: object) -> RetentionWorker | None:
    """A started worker when the config asks for retention; None otherwise (and, with a
    store that is not SQL, a warning: nothing is swept there)."""
    policy = retention_policy(settings)
    if not policy.enabled:
        return None
    if not isinstance(store, SqlStore):
        logger.warning("retention is configured, but the store is not SQL: nothing is deleted")
        return None
    worker = RetentionWorker(store, policy, interval=settings.retention_interval)
    worker.start()
    return worker
