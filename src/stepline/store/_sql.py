"""SqlStore: the StepStore on SQLite or PostgreSQL.

The statements a running response needs on every step (creating it, its
steps, its event log, its end, its lease) run on the drivers themselves,
``sqlite3`` and ``asyncpg`` (:mod:`stepline.store._hot` over
:mod:`stepline.store._drivers`). Everything else — the statements off that
path (listings, deletes, keys, conversations, retention, usage) — speaks
SQLAlchemy Core on an async engine (aiosqlite, asyncpg). The engine is set up
in :mod:`stepline.store._engines`, the schema migrated by
:mod:`stepline.store._revisions`; the statements are in
:mod:`stepline.store._statements` and the modules of each concern.

Invariants beyond the :class:`~stepline.store._base.StepStore` contract:

* On SQLite, the writes of one process — the drivers' and SQLAlchemy's —
  queue on one asyncio lock, so they never meet SQLite's busy handler (which
  sleeps in growing steps) or each other's open transaction. Reads run on
  the autocommit engine and take no write lock.
* A write that has started is not abandoned when its caller is cancelled: it
  runs in its own task, the caller waits for it and then sees the
  cancellation. Driver connections are never left mid-statement.
* Database failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stepline._steps import NewStep, Step, StepState
from stepline.errors import StoreError
from stepline.store import _conversations as conversations
from stepline.store import _hot as hot
from stepline.store import _listing as listing
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
from stepline.store._drivers import Driver, PostgresDriver, SqliteDriver
from stepline.store._engines import (
    autocommit_engine,
    connect_args_of,
    create_store_engine,
    describe_error,
)
from stepline.store._keys import KeyStore, SqlKeyStore
from stepline.store._listing_values import ResponsePage, ResponseQuery, ResponseTree
from stepline.store._migrate import engine_revision, migrate_engine
from stepline.store._notify import EventNotifier, EventWatch, PgListener
from stepline.store._statements import (
    CANCEL_STEPS,
    DELETE_EVENTS,
    DELETE_ITEMS,
    DELETE_RESPONSE,
    DELETE_STEPS,
    FIND_ITEMS,
    LIST_RESPONSES,
    record_from_row,
)

__all__ = ["SqlStore", "open_store"]

_T = TypeVar("_T")


async def open_store(url: str, *, migrate: bool = True, pool_size: int = 10) -> SqlStore:
    """Open the store at ``url``, migrating it to the head revision first by default."""
    engine = create_store_engine(url, pool_size=pool_size)
    if migrate:
        try:
            await migrate_engine(engine)
        except BaseException:
            await engine.dispose()
            raise
    return SqlStore(engine)


# -- the store ----------------------------------------------------------------


class SqlStore:
    """A :class:`~stepline.store._base.StepStore` on an SQLAlchemy async engine.

    Build it with :func:`open_store`, or from an engine made by
    :func:`~stepline.store._engines.create_store_engine` (the engine must be set up
    that way, and its database migrated with
    :func:`~stepline.store._revisions.migrate_engine`).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = autocommit_engine(engine)
        self._writes: set[asyncio.Task[Any]] = set()
        self._postgres = engine.dialect.name == "postgresql"
        self._sqlite_writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._notifier = EventNotifier()
        self._listener: PgListener | None = None
        self._driver: Driver | None = None
        self._opening = asyncio.Lock()
        self._keys = SqlKeyStore(self)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def keys(self) -> KeyStore:
        return self._keys

    async def current_revision(self) -> str | None:
        """The schema revision of the database; compare with
        :func:`~stepline.store._revisions.head_revision`."""
        return await engine_revision(self._engine)

    # -- responses --

    async def create_response(
        self,
        record: ResponseRecord,
        *,
        steps: Sequence[NewStep] = (),
        events: Sequence[EventRow] = (),
    ) -> list[Step]:
        created = hot.create_response(await self._hot(), record, steps=steps, events=events)
        return await self._guard(created)

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        return await hot.get_response(await self._hot(), response_id)

    async def list_responses(self, *, limit: int = 20) -> list[ResponseRecord]:
        async def work(connection: AsyncConnection) -> list[ResponseRecord]:
            result = await connection.execute(LIST_RESPONSES, {"p_limit": limit})
            return [record_from_row(row) for row in result]

        return await self._read(work)

    async def set_status(self, response_id: str, status: str) -> None:
        if status in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is terminal: use finish_response")
        await self._guard(hot.set_status(await self._hot(), response_id, status))

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
        driver = await self._hot()

        async def work() -> bool:
            async with driver.transaction() as tx:
                return await hot.finish_response(tx, end)

        return await self._guard(work())

    async def find_items(
        self, item_ids: Sequence[str], *, key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        params = {"p_ids": list(dict.fromkeys(item_ids)), "p_key": key_id}

        async def work(connection: AsyncConnection) -> dict[str, dict[str, Any]]:
            result = await connection.execute(FIND_ITEMS, params)
            return {row.id: row.data for row in result}

        return await self._read(work)

    async def delete_response(self, response_id: str) -> bool:
        params = {"p_id": response_id}

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(DELETE_EVENTS, params)
            await connection.execute(DELETE_ITEMS, params)
            await connection.execute(DELETE_STEPS, params)
            return (await connection.execute(DELETE_RESPONSE, params)).rowcount == 1

        return await self._write(work, transaction=True)

    # -- steps --

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        if not steps:
            return []
        recorded = hot.record_steps(
            await self._hot(), response_id, scope=scope, steps=steps, start=start
        )
        return await self._guard(recorded)

    async def start_step(self, step_id: str) -> Step:
        return await self._guard(hot.start_step(await self._hot(), step_id))

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
        driver = await self._hot()

        async def work() -> Step | None:
            async with driver.transaction() as tx:
                return await hot.finish_step(
                    tx, step_id, state=state, response=response, error=error, now=time.time()
                )

        return await self._guard(work())

    async def cancel_steps(self, response_id: str) -> int:
        params = {"p_id": response_id, "p_now": time.time()}

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(CANCEL_STEPS, params)).rowcount

        return await self._write(work)

    async def load_chain(self, response_id: str, *, scope: str | None) -> list[Step]:
        return await hot.load_chain(await self._hot(), response_id, scope=scope)

    async def load_steps(self, response_id: str) -> list[Step]:
        return await hot.load_steps(await self._hot(), response_id)

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
        appended = await self._guard(
            hot.append_events(await self._hot(), rows, ends=ends, owner=owner)
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
            dsn = self._engine.url.set(drivername="postgresql")
            self._listener = PgListener(dsn.render_as_string(hide_password=False), self._notifier)
            self._listener.start()
        return self._notifier.watch(response_id)

    async def stored_ids(self, response_ids: Sequence[str]) -> set[str]:
        return await hot.stored_ids(await self._hot(), response_ids)

    async def read_events(self, response_id: str, *, after: int, limit: int) -> list[EventRow]:
        return await hot.read_events(await self._hot(), response_id, after=after, limit=limit)

    async def step_events(self, response_id: str, step_id: str) -> list[EventRow]:
        return await hot.step_events(await self._hot(), response_id, step_id)

    async def last_event_seq(self, response_id: str) -> int:
        return await hot.last_event_seq(await self._hot(), response_id)

    # -- leases --

    async def renew_leases(
        self, owner: str, response_ids: Sequence[str], *, expires_at: float
    ) -> set[str]:
        if not response_ids:
            return set()
        renewed = hot.renew_leases(await self._hot(), owner, response_ids, expires_at=expires_at)
        return await self._guard(renewed)

    async def release_lease(self, response_id: str, owner: str) -> None:
        await self._guard(hot.release_lease(await self._hot(), response_id, owner))

    async def claim_expired(
        self, owner: str, *, now: float, expires_at: float, limit: int
    ) -> list[str]:
        claimed = hot.claim_expired(
            await self._hot(), owner, now=now, expires_at=expires_at, limit=limit
        )
        return await self._guard(claimed)

    async def close(self) -> None:
        """Wait for writes still running, then close every connection."""
        if self._writes:
            await asyncio.wait(self._writes)
        if self._listener is not None:
            await self._listener.aclose()
        if self._driver is not None:
            await self._driver.close()
        await self._engine.dispose()

    # -- machinery --

    async def _hot(self) -> Driver:
        """The driver for the hot path's statements (opened on first use)."""
        if self._driver is None:
            async with self._opening:
                if self._driver is None:
                    self._driver = await self._open_driver()
        return self._driver

    async def _open_driver(self) -> Driver:
        url = self._engine.url
        if self._sqlite_writer is not None:
            assert url.database is not None  # normalize_database_url refuses :memory:
            return SqliteDriver(url.database, self._sqlite_writer)
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = self._engine.pool
        size = pool.size() if isinstance(pool, sa.pool.QueuePool) else 10
        connect_args = connect_args_of(self._engine)
        return await PostgresDriver.connect(dsn, size=size, connect_args=connect_args)

    async def _guard(self, write: Awaitable[_T]) -> _T:
        """Await a write in a task of its own: a write that has started is not
        abandoned when its caller is cancelled (the caller waits, then sees it)."""
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

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        try:
            async with self._autocommit.connect() as connection:
                return await work(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store read failed: {describe_error(exc)}") from exc

    async def _write(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], *, transaction: bool = False
    ) -> _T:
        return await self._guard(self._run_write(work, transaction))

    async def _run_write(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], transaction: bool
    ) -> _T:
        if self._sqlite_writer is None:
            return await self._run_write_now(work, transaction)
        # SQLite takes one writer at a time, and a writer that finds the lock
        # taken sleeps in growing steps (its busy handler): queue this
        # process's writers here instead, in order, without sleeping
        async with self._sqlite_writer:
            return await self._run_write_now(work, transaction)

    async def _run_write_now(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], transaction: bool
    ) -> _T:
        try:
            if transaction:
                async with self._engine.begin() as connection:
                    return await work(connection)
            async with self._autocommit.connect() as connection:
                return await work(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {describe_error(exc)}") from exc

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            # Mark the outcome as seen: a caller cancelled mid-write never reads it.
            task.exception()

    # -- for the store's other modules (keys, retention, usage) --

    async def run_read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` on an autocommit connection, as the store's own reads run."""
        return await self._read(work)

    async def run_write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` in one transaction, queued with the store's own writes (on
        SQLite, behind this process's writers; never abandoned once started)."""
        return await self._write(work, transaction=True)

    # -- conversations (the statements are in ``store/_conversations.py``) --

    async def create_conversation(
        self, record: ConversationRecord, items: Sequence[dict[str, Any]] = ()
    ) -> list[ConversationItem]:
        return await self._guard(hot.create_conversation(await self._hot(), record, items))

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        async def work(connection: AsyncConnection) -> ConversationRecord | None:
            return await conversations.get_conversation(connection, conversation_id)

        return await self._read(work)

    async def update_conversation(
        self, conversation_id: str, *, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        async def work(connection: AsyncConnection) -> ConversationRecord | None:
            return await conversations.update_conversation(connection, conversation_id, metadata)

        return await self._write(work)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async def work(connection: AsyncConnection) -> bool:
            return await conversations.delete_conversation(connection, conversation_id)

        return await self._write(work, transaction=True)

    async def append_conversation_items(
        self, conversation_id: str, items: Sequence[dict[str, Any]]
    ) -> list[ConversationItem] | None:
        driver = await self._hot()

        async def work() -> list[ConversationItem] | None:
            async with driver.transaction() as tx:
                return await hot.append_conversation_items(tx, conversation_id, items)

        return await self._guard(work())

    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[ConversationItem]:
        async def work(connection: AsyncConnection) -> list[ConversationItem]:
            return await conversations.list_items(
                connection,
                conversation_id,
                after=after,
                before=before,
                limit=limit,
                descending=descending,
            )

        return await self._read(work)

    async def get_conversation_item(
        self, conversation_id: str, item_id: str
    ) -> ConversationItem | None:
        async def work(connection: AsyncConnection) -> ConversationItem | None:
            return await conversations.get_item(connection, conversation_id, item_id)

        return await self._read(work)

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        async def work(connection: AsyncConnection) -> bool:
            return await conversations.delete_item(connection, conversation_id, item_id)

        return await self._write(work)

    # -- the console's reads (store/listing.py) --

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        async def work(connection: AsyncConnection) -> ResponsePage:
            return await listing.list_summaries(connection, query)

        return await self._read(work)

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        async def work(connection: AsyncConnection) -> ResponseTree | None:
            return await listing.load_tree(connection, response_id)

        return await self._read(work)
