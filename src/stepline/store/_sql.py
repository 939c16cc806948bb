"""SqlStore: the StepStore on SQLite or PostgreSQL.

The statements a running response needs on every step (creating it, its
steps, its event log, its end, its lease), the API keys a server re-reads
and the schema's revision run on the drivers themselves, ``sqlite3`` and
``asyncpg`` (:mod:`stepline.store._hot`, :mod:`stepline.store._keys` and
:mod:`stepline.store._revisions` over :mod:`stepline.store._drivers`); a
driver is opened from the URL alone. Everything else — the statements off
that path (listings, deletes, key writes, conversations' reads, retention,
usage) — speaks SQLAlchemy Core on an async engine (aiosqlite, asyncpg), in
:mod:`stepline.store._cold` and the modules of each concern. The engine is
set up in :mod:`stepline.store._engines`, the schema migrated by
:mod:`stepline.store._migrate`.

Invariants beyond the :class:`~stepline.store._base.StepStore` contract:

* This module imports no SQLAlchemy. A store opened from a URL makes its
  engine (and loads SQLAlchemy, some 18 MB resident) on the first call that
  needs it: a process that only runs responses never does.
* On SQLite, the writes of one process — the drivers' and SQLAlchemy's —
  queue on one asyncio lock, so they never meet SQLite's busy handler (which
  sleeps in growing steps) or each other's open transaction. Reads run
  without it and take no write lock.
* A write that has started is not abandoned when its caller is cancelled: it
  runs in its own task, the caller waits for it and then sees the
  cancellation. Driver connections are never left mid-statement.
* Database failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from stepline._steps import NewStep, Step, StepState
from stepline.store import _hot as hot
from stepline.store._base import (
    TERMINAL_STATUSES,
    Appended,
    ConversationItem,
    ConversationRecord,
    EventRow,
    ResponseEnd,
    ResponseRecord,
    StepEnd,
)
from stepline.store._drivers import Driver, open_driver
from stepline.store._keys import KeyStore, SqlKeyStore
from stepline.store._listing_values import ResponsePage, ResponseQuery, ResponseTree
from stepline.store._notify import EventNotifier, EventWatch, PgListener
from stepline.store._revisions import database_revision
from stepline.store._urls import normalize_database_url, postgres_dsn, sqlite_path

if TYPE_CHECKING:  # SQLAlchemy loads with the cold path, on its first use
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from stepline.store._cold import ColdPath

__all__ = ["SqlStore", "open_store"]

_T = TypeVar("_T")


async def open_store(url: str, *, migrate: bool = True, pool_size: int = 10) -> SqlStore:
    """Open the store at ``url``, migrating it to the head revision first by default.

    Without ``migrate`` no engine is made: SQLAlchemy loads on the store's first
    call off the hot path."""
    if not migrate:
        return SqlStore(url, pool_size=pool_size)
    from stepline.store._engines import create_store_engine
    from stepline.store._migrate import migrate_engine

    engine = create_store_engine(url, pool_size=pool_size)
    try:
        await migrate_engine(engine)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine)


# -- the store ----------------------------------------------------------------


class SqlStore:
    """A :class:`~stepline.store._base.StepStore` on SQLite or PostgreSQL.

    Build it with :func:`open_store`, from the URL of a migrated database (its
    engine made on first use, with ``pool_size`` connections and the driver's
    ``connect_args``), or from an engine made by
    :func:`~stepline.store._engines.create_store_engine` (the engine must be set
    up that way, and its database migrated with
    :func:`~stepline.store._migrate.migrate_engine`).
    """

    def __init__(
        self,
        engine: AsyncEngine | str,
        *,
        pool_size: int = 10,
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        handed: AsyncEngine | None = None
        if isinstance(engine, str):
            self._url = normalize_database_url(engine)
            self._pool_size = pool_size
            self._connect_args = dict(connect_args or {})
        else:  # the drivers connect as the engine does
            from stepline.store._engines import connect_args_of, pool_size_of, url_of

            handed = engine
            self._url = url_of(engine)
            self._pool_size = pool_size_of(engine)
            self._connect_args = connect_args_of(engine)
        self._writes: set[asyncio.Task[Any]] = set()
        self._postgres = sqlite_path(self._url) is None
        self._sqlite_writer = None if self._postgres else asyncio.Lock()
        self._cold = None if handed is None else self._cold_path_on(handed)
        self._notifier = EventNotifier()
        self._listener: PgListener | None = None
        self._driver: Driver | None = None
        self._opening = asyncio.Lock()
        self._keys = SqlKeyStore(self)

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine of the paths off the hot one (made on first use)."""
        return self._cold_path().engine

    @property
    def keys(self) -> KeyStore:
        return self._keys

    async def current_revision(self) -> str | None:
        """The schema revision of the database; compare with
        :func:`~stepline.store._revisions.head_revision`."""
        return await database_revision(await self.hot_driver())

    # -- responses --

    async def create_response(
        self,
        record: ResponseRecord,
        *,
        steps: Sequence[NewStep] = (),
        events: Sequence[EventRow] = (),
    ) -> list[Step]:
        created = hot.create_response(await self.hot_driver(), record, steps=steps, events=events)
        return await self.guard(created)

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        return await hot.get_response(await self.hot_driver(), response_id)

    async def list_responses(self, *, limit: int = 20) -> list[ResponseRecord]:
        return await self._cold_path().list_responses(limit)

    async def set_status(self, response_id: str, status: str) -> None:
        if status in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is terminal: use finish_response")
        await self.guard(hot.set_status(await self.hot_driver(), response_id, status))

    async def finish_response(
        self,
        response_id: str,
        *,
        status: str,
        result: dict[str, Any],
        completed_at: float | None,
        items: Sequence[dict[str, Any]] = (),
    ) -> bool:
        end = ResponseEnd(
            response_id=response_id,
            status=status,
            result=result,
            completed_at=completed_at,
            items=items,
        )
        driver = await self.hot_driver()

        async def work() -> bool:
            async with driver.transaction() as tx:
                return await hot.finish_response(tx, end)

        return await self.guard(work())

    async def find_items(
        self, item_ids: Sequence[str], *, key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        return await self._cold_path().find_items(item_ids, key_id)

    async def delete_response(self, response_id: str) -> bool:
        return await self._cold_path().delete_response(response_id)

    # -- steps --

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        if not steps:
            return []
        recorded = hot.record_steps(
            await self.hot_driver(), response_id, scope=scope, steps=steps, start=start
        )
        return await self.guard(recorded)

    async def start_step(self, step_id: str) -> Step:
        return await self.guard(hot.start_step(await self.hot_driver(), step_id))

    async def finish_step(
        self,
        step_id: str,
        *,
        state: StepState,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Step | None:
        if not state.terminal:
            raise ValueError(f"finish_step needs a terminal state, not {state.value!r}")
        driver = await self.hot_driver()

        async def work() -> Step | None:
            async with driver.transaction() as tx:
                return await hot.finish_step(
                    tx, step_id, state=state, response=response, error=error, now=time.time()
                )

        return await self.guard(work())

    async def cancel_steps(self, response_id: str) -> int:
        return await self._cold_path().cancel_steps(response_id)

    async def load_chain(self, response_id: str, *, scope: str | None) -> list[Step]:
        return await hot.load_chain(await self.hot_driver(), response_id, scope=scope)

    async def load_steps(self, response_id: str) -> list[Step]:
        return await hot.load_steps(await self.hot_driver(), response_id)

    # -- events --

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        if not rows and not ends:
            return Appended(ends=[])
        appended = await self.guard(
            hot.append_events(await self.hot_driver(), rows, ends=ends, owner=owner)
        )
        written = sorted({row.response_id for row in rows} - appended.fenced)
        if written:
            self._notifier.notify(written)
        return appended

    async def listening(self) -> None:
        """Wait until this process receives other processes' event notifications.

        Only PostgreSQL carries them; elsewhere this returns at once.
        """
        if self._postgres:
            self.watch_events("").__exit__()
            assert self._listener is not None
            await self._listener.listening.wait()

    def watch_events(self, response_id: str) -> EventWatch:
        if self._postgres and self._listener is None:
            self._listener = PgListener(postgres_dsn(self._url), self._notifier)
            self._listener.start()
        return self._notifier.watch(response_id)

    async def stored_ids(self, response_ids: Sequence[str]) -> set[str]:
        return await hot.stored_ids(await self.hot_driver(), response_ids)

    async def read_events(self, response_id: str, *, after: int, limit: int) -> list[EventRow]:
        return await hot.read_events(await self.hot_driver(), response_id, after=after, limit=limit)

    async def step_events(self, response_id: str, step_id: str) -> list[EventRow]:
        return await hot.step_events(await self.hot_driver(), response_id, step_id)

    async def last_event_seq(self, response_id: str) -> int:
        return await hot.last_event_seq(await self.hot_driver(), response_id)

    # -- leases --

    async def renew_leases(
        self, owner: str, response_ids: Sequence[str], *, expires_at: float
    ) -> set[str]:
        if not response_ids:
            return set()
        renewed = hot.renew_leases(
            await self.hot_driver(), owner, response_ids, expires_at=expires_at
        )
        return await self.guard(renewed)

    async def release_lease(self, response_id: str, owner: str) -> None:
        await self.guard(hot.release_lease(await self.hot_driver(), response_id, owner))

    async def claim_expired(
        self, owner: str, *, now: float, expires_at: float, limit: int
    ) -> list[str]:
        claimed = hot.claim_expired(
            await self.hot_driver(), owner, now=now, expires_at=expires_at, limit=limit
        )
        return await self.guard(claimed)

    async def close(self) -> None:
        """Wait for writes still running, then close every connection."""
        if self._writes:
            await asyncio.wait(self._writes)
        if self._listener is not None:
            await self._listener.aclose()
        if self._driver is not None:
            await self._driver.close()
        if self._cold is not None:
            await self._cold.dispose()

    # -- machinery --

    async def hot_driver(self) -> Driver:
        """The driver the hot path's statements run on (opened on first use); the
        store's other modules (keys) run theirs on it too."""
        if self._driver is None:
            async with self._opening:
                if self._driver is None:
                    self._driver = await self._open_driver()
        return self._driver

    async def _open_driver(self) -> Driver:
        return await open_driver(
            self._url,
            writer_lock=self._sqlite_writer,
            size=self._pool_size,
            connect_args=self._connect_args,
        )

    def _cold_path(self) -> ColdPath:
        """The statements off the hot path (made, with the engine, on first use)."""
        if self._cold is None:
            from stepline.store._engines import create_store_engine

            engine = create_store_engine(
                self._url, pool_size=self._pool_size, connect_args=self._connect_args
            )
            self._cold = self._cold_path_on(engine)
        return self._cold

    def _cold_path_on(self, engine: AsyncEngine) -> ColdPath:
        from stepline.store._cold import ColdPath

        return ColdPath(engine, writer_lock=self._sqlite_writer, guard=self.guard)

    async def guard(self, write: Awaitable[_T]) -> _T:
        """Await a write in a task of its own: a write that has started is not
        abandoned when its caller is cancelled (the caller waits, then sees it).
        The store's other modules (keys, the cold path) await theirs here too."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                # The caller was cancelled mid-write: the write still finishes
                # (its outcome is durable either way), then the cancellation
                # propagates. A second cancellation stops only the waiting.
                await asyncio.wait([task])
            raise

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            # Mark the outcome as seen: a caller cancelled mid-write never reads it.
            task.exception()

    # -- for the store's other modules (keys, retention, usage) --

    async def run_read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` on an autocommit connection, as the store's own reads run."""
        return await self._cold_path().read(work)

    async def run_write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` in one transaction, queued with the store's own writes (on
        SQLite, behind this process's writers; never abandoned once started)."""
        return await self._cold_path().write(work, transaction=True)

    # -- conversations (the statements are in ``store/_conversations.py``) --

    async def create_conversation(
        self, record: ConversationRecord, items: Sequence[dict[str, Any]] = ()
    ) -> list[ConversationItem]:
        return await self.guard(hot.create_conversation(await self.hot_driver(), record, items))

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return await self._cold_path().get_conversation(conversation_id)

    async def update_conversation(
        self, conversation_id: str, *, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        return await self._cold_path().update_conversation(conversation_id, metadata)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._cold_path().delete_conversation(conversation_id)

    async def append_conversation_items(
        self, conversation_id: str, items: Sequence[dict[str, Any]]
    ) -> list[ConversationItem] | None:
        driver = await self.hot_driver()

        async def work() -> list[ConversationItem] | None:
            async with driver.transaction() as tx:
                return await hot.append_conversation_items(tx, conversation_id, items)

        return await self.guard(work())

    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[ConversationItem]:
        return await self._cold_path().list_conversation_items(
            conversation_id, after=after, before=before, limit=limit, descending=descending
        )

    async def get_conversation_item(
        self, conversation_id: str, item_id: str
    ) -> ConversationItem | None:
        return await self._cold_path().get_conversation_item(conversation_id, item_id)

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        return await self._cold_path().delete_conversation_item(conversation_id, item_id)

    # -- the console's reads (``store/_listing.py``) --

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        return await self._cold_path().list_summaries(query)

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        return await self._cold_path().response_tree(response_id)
