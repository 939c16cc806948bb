"""The database drivers themselves, for the statements of the store's hot path.

SQLAlchemy's async layer costs 0.4-0.5 ms per statement (a hop to the
driver's thread or a greenlet switch, then back); the drivers take 10-40 µs.
The statements a running response needs on every step (see
:mod:`stepline.store._hot`) therefore go straight to ``sqlite3`` or
``asyncpg`` through a :class:`Driver`, as do the other reads a server makes
at steady state (its API keys, the schema's revision). A driver opens from
the database URL alone (:func:`open_driver`), so a process that only serves
responses never loads SQLAlchemy; SQLAlchemy and Alembic keep the schema, the
migrations and every statement off that path (loaded on its first use).

A statement is written once, with PostgreSQL's ``$1`` placeholders; the
SQLite driver reads them as SQLite's ``?1``. Lists are bound through
:meth:`Driver.in_list` and :meth:`Driver.list_arg` (``= ANY($1)`` on
PostgreSQL, ``json_each`` on SQLite).

Invariants:

* SQLite: one connection, used on the event loop itself (no thread). A
  statement runs to its end without yielding, so a transaction — ``BEGIN
  IMMEDIATE`` to ``COMMIT`` with nothing awaited between — never interleaves
  with another coroutine's statements. Writers queue on the store's writer
  lock (shared with the store's SQLAlchemy writes in this process, once it
  makes any); a lock held by another process is waited for by sleeping,
  never by blocking the loop (the connection's busy timeout is zero).
* SQLite: no commit on the event loop ever checkpoints. A checkpoint writes
  the WAL back into the database file and syncs it: milliseconds that would
  land on whichever request's commit crossed SQLite's threshold (one in
  every few dozen). The hot connection has automatic checkpoints off, and a
  :class:`WalCheckpointer` thread makes passive ones (they never wait for a
  reader or a writer) on a connection of its own, with the GIL released.
* PostgreSQL: an asyncpg pool of its own. Statements are prepared once per
  connection (asyncpg's cache); a connection goes back to the pool without
  the reset query, since only these statements use it and none leaves
  session state behind.
* Every database failure surfaces as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from stepline.errors import StoreError
from stepline.store._urls import postgres_dsn, sqlite_path

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "Driver",
    "PostgresDriver",
    "Rows",
    "SqliteDriver",
    "Tx",
    "WalCheckpointer",
    "dump_json",
    "load_json",
    "open_driver",
]


def dump_json(value: Any) -> str | None:
    """A JSON column's value as the statements bind it: orjson text (None stays NULL)."""
    return None if value is None else orjson.dumps(value).decode()


def load_json(text: str | bytes | None) -> Any:
    """A JSON column read back (NULL as None)."""
    return None if text is None else orjson.loads(text)


#: what a statement returns: its rows, each indexable by column position
Rows = list[Sequence[Any]]

_PLACEHOLDER = re.compile(r"\$(\d+)")
#: how long a write waits for another process's SQLite write lock
_SQLITE_BUSY_SECONDS = 10.0

logger = logging.getLogger(__name__)


class Tx(Protocol):
    """The statements of one transaction, and the SQL dialect they are in."""

    postgres: bool

    async def fetch(self, sql: str, *args: Any) -> Rows: ...

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...

    def in_list(self, placeholder: str) -> str:
        """SQL that tests a column against the list bound at ``placeholder``."""
        ...

    def list_arg(self, values: Sequence[str]) -> Any:
        """``values`` as the driver binds a list."""
        ...


class Driver(Tx, Protocol):
    """A database connection (or pool) for the hot statements."""

    async def write(self, sql: str, *args: Any) -> Rows:
        """One statement that writes, on its own (autocommit)."""
        ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Tx]:
        """Statements that commit together, or not at all."""
        ...

    async def close(self) -> None: ...


async def open_driver(
    url: str,
    *,
    writer_lock: asyncio.Lock | None = None,
    size: int = 10,
    connect_args: Mapping[str, Any] | None = None,
) -> Driver:
    """The driver for the database at ``url``, opened from the URL alone.

    SQLite takes ``writer_lock`` (the one its store's writes queue on; a lock of
    its own when None); PostgreSQL a pool of up to ``size`` connections, made
    with ``connect_args``."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteDriver(path, writer_lock or asyncio.Lock())
    return await PostgresDriver.connect(postgres_dsn(url), size=size, connect_args=connect_args)


# -- SQLite -------------------------------------------------------------------


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteDriver:
    """``sqlite3`` on the event loop's thread, for a WAL database file."""

    postgres = False

    def __init__(
        self, path: str, writer_lock: asyncio.Lock, *, checkpoint_every: float = 0.25
    ) -> None:
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=0
            )
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA foreign_keys=ON",
                "PRAGMA wal_autocheckpoint=0",
            ):
                self._db.execute(pragma)
            self.checkpointer = WalCheckpointer(path, interval=checkpoint_every)
        except sqlite3.Error as exc:
            raise StoreError(f"store open failed: {type(exc).__name__}: {exc}") from exc
        self._lock = writer_lock
        self._sql: dict[str, str] = {}

    def _translated(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = _PLACEHOLDER.sub(r"?\1", sql)
        return found

    async def _run(self, sql: str, args: Sequence[Any], *, many: bool = False) -> Rows:
        """Run one statement, sleeping (not blocking) while another process writes."""
        statement = self._translated(sql)
        delay, deadline = 0.0005, time.monotonic() + _SQLITE_BUSY_SECONDS
        while True:
            try:
                if many:
                    self._db.executemany(statement, args)
                    return []
                return self._db.execute(statement, args).fetchall()
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise StoreError(f"store statement failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"store statement failed: {type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def fetch(self, sql: str, *args: Any) -> Rows:
        return await self._run(sql, args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._run(sql, args, many=True)

    async def write(self, sql: str, *args: Any) -> Rows:
        async with self._lock:
            return await self._run(sql, args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            await self._run("BEGIN IMMEDIATE", ())
            try:
                yield _SqliteTx(self)
            except BaseException:
                self._db.rollback()
                raise
            try:
                self._db.commit()
            except sqlite3.Error as exc:
                self._db.rollback()
                raise StoreError(f"store commit failed: {type(exc).__name__}: {exc}") from exc

    def in_list(self, placeholder: str) -> str:
        return f"IN (SELECT value FROM json_each({placeholder}))"

    def list_arg(self, values: Sequence[str]) -> Any:
        return orjson.dumps(list(values)).decode()

    async def close(self) -> None:
        await asyncio.to_thread(self.checkpointer.stop)
        self._db.close()


class WalCheckpointer:
    """Passive WAL checkpoints of one SQLite database, every ``interval`` seconds, on a
    daemon thread and a connection of its own (see the module's invariants)."""

    def __init__(self, path: str, *, interval: float = 0.25) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._interval = interval
        self._stopping = threading.Event()
        #: the WAL frames the last checkpoint found
        self.last_frames = 0
        self._thread = threading.Thread(
            target=self._run, name="stepline-wal-checkpoint", daemon=True
        )
        self._thread.start()

    def checkpoint(self) -> None:
        try:
            [(_busy, frames, _done)] = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            logger.exception("WAL checkpoint failed; trying again in %.2fs", self._interval)
            return
        self.last_frames = frames

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            self.checkpoint()

    def stop(self) -> None:
        """Stop after a last checkpoint (blocks; call it off the loop)."""
        self._stopping.set()
        self._thread.join()
        self.checkpoint()
        self._db.close()


class _SqliteTx:
    """A transaction's statements: the driver's, without the writer lock it holds."""

    postgres = False

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver
        self.in_list = driver.in_list
        self.list_arg = driver.list_arg

    async def fetch(self, sql: str, *args: Any) -> Rows:
        return await self._driver.fetch(sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._driver.executemany(sql, args)


# -- PostgreSQL ---------------------------------------------------------------


def _pg_failures() -> tuple[type[BaseException], ...]:
    """What a PostgreSQL statement can fail with: the server's errors, a lost or broken
    connection (a connection cut mid-statement can leave one "in another operation",
    an InternalClientError, until the pool replaces it), the network, a timeout.

    A function, read only as an exception is matched: asyncpg (megabytes resident)
    is imported by the PostgreSQL driver alone, never on SQLite."""
    import asyncpg

    return (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions.InternalClientError,
        OSError,
        asyncio.TimeoutError,
    )


def _pg_in_list(placeholder: str) -> str:
    return f"= ANY({placeholder}::text[])"


async def _keep_as_is(connection: asyncpg.Connection) -> None:
    """The pool's reset, skipped: nothing on these connections sets session state."""


class PostgresDriver:
    """An asyncpg pool for the hot statements."""

    postgres = True

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, *, size: int, connect_args: Mapping[str, Any] | None = None
    ) -> PostgresDriver:
        """A pool of up to ``size`` connections; ``connect_args`` go to asyncpg."""
        import asyncpg

        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=size, reset=_keep_as_is, **dict(connect_args or {})
            )
        except _pg_failures() as exc:
            raise StoreError(f"store open failed: {type(exc).__name__}: {exc}") from exc
        return cls(pool)

    async def fetch(self, sql: str, *args: Any) -> Rows:
        try:
            async with self._pool.acquire() as connection:
                return list(await connection.fetch(sql, *args))
        except _pg_failures() as exc:
            raise StoreError(f"store statement failed: {type(exc).__name__}: {exc}") from exc

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        try:
            async with self._pool.acquire() as connection:
                await connection.executemany(sql, args)
        except _pg_failures() as exc:
            raise StoreError(f"store statement failed: {type(exc).__name__}: {exc}") from exc

    async def write(self, sql: str, *args: Any) -> Rows:
        return await self.fetch(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                yield _PgTx(connection)
        except _pg_failures() as exc:
            raise StoreError(f"store transaction failed: {type(exc).__name__}: {exc}") from exc

    def in_list(self, placeholder: str) -> str:
        return _pg_in_list(placeholder)

    def list_arg(self, values: Sequence[str]) -> Any:
        return list(values)

    async def close(self) -> None:
        await self._pool.close()


class _PgTx:
    postgres = True

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    def in_list(self, placeholder: str) -> str:
        return _pg_in_list(placeholder)

    def list_arg(self, values: Sequence[str]) -> Any:
        return list(values)

    async def fetch(self, sql: str, *args: Any) -> Rows:
        return list(await self._connection.fetch(sql, *args))

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._connection.executemany(sql, args)
