"""The SQL store's engines: an async SQLAlchemy engine set up per dialect.

Every engine the SQL store, its migrations and the CLI use is made here, so
they all meet the database the same way. Importing this module imports
SQLAlchemy: the store does so on the first call off its hot path, never to
serve a response.

Invariants:

* A URL is read by :func:`~stepline.store._urls.normalize_database_url`,
  as the drivers of the hot path read it.
* On SQLite every connection runs in WAL mode with ``synchronous=NORMAL``,
  a busy timeout and foreign keys on; the driver opens no transaction of its
  own, and every transaction begins ``IMMEDIATE`` (a transaction that reads
  before it writes would otherwise fail with SQLITE_BUSY when two of them
  try to upgrade their locks at once). :func:`autocommit_engine` is the
  exception: its statements commit alone, so a read takes no write lock.
* The driver arguments an engine was made with stay with it
  (:func:`connect_args_of`): the hot path's own asyncpg pool connects the
  same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stepline.store._urls import normalize_database_url

__all__ = [
    "autocommit_engine",
    "connect_args_of",
    "create_store_engine",
    "describe_error",
    "pool_size_of",
    "url_of",
]

#: the driver arguments each engine was made with (see ``create_store_engine``)
_CONNECT_ARGS: weakref.WeakKeyDictionary[sa.Engine, dict[str, Any]] = weakref.WeakKeyDictionary()

#: execution option of the autocommit engine on SQLite: skip our BEGIN IMMEDIATE
_SQLITE_AUTOCOMMIT = "stepline_sqlite_autocommit"
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)


def create_store_engine(
    url: str, *, pool_size: int = 10, connect_args: Mapping[str, Any] | None = None
) -> AsyncEngine:
    """An async engine for ``url``, set up the way :class:`~stepline.store.SqlStore`
    relies on.

    ``connect_args`` go to the driver, e.g. asyncpg's
    ``{"server_settings": {"search_path": "myschema"}}``.
    """
    url = normalize_database_url(url)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args=dict(connect_args or {}),
    )
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    # the hot path's own asyncpg pool connects the same way
    _CONNECT_ARGS[engine.sync_engine] = dict(connect_args or {})
    return engine


def connect_args_of(engine: AsyncEngine) -> dict[str, Any]:
    """The driver arguments ``engine`` was made with (none for a foreign engine)."""
    return _CONNECT_ARGS.get(engine.sync_engine, {})


def _configure_sqlite(engine: AsyncEngine) -> None:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions on its own; ``on_begin`` does.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    def on_begin(connection: sa.Connection) -> None:
        if not connection.get_execution_options().get(_SQLITE_AUTOCOMMIT):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    sa.event.listen(engine.sync_engine, "connect", on_connect)
    sa.event.listen(engine.sync_engine, "begin", on_begin)


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for statements that each commit alone: on SQLite no ``BEGIN
    IMMEDIATE`` (a read then takes no write lock), elsewhere ``AUTOCOMMIT``."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_AUTOCOMMIT: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def describe_error(exc: BaseException) -> str:
    """A database failure in one line, as a :class:`~stepline.errors.StoreError` says it."""
    # SQLAlchemy's own message repeats the statement and its parameters, which
    # may hold whole payloads; the driver's message is what a reader needs.
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    return f"{type(exc).__name__}: {exc}"


def url_of(engine: AsyncEngine) -> str:
    """The URL ``engine`` connects to, password included (for the drivers)."""
    return engine.url.render_as_string(hide_password=False)


def pool_size_of(engine: AsyncEngine) -> int:
    """How many connections ``engine`` pools (10 for a pool that does not say)."""
    pool = engine.pool
    return pool.size() if isinstance(pool, sa.pool.QueuePool) else 10
