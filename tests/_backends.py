"""Stores and databases on every backend, for tests that must hold on all of them.

Use :func:`backend_params` to parametrise a fixture and :func:`store_backend`
to open a migrated, isolated store of one kind::

    @pytest.fixture(params=backend_params())
    async def store(request, tmp_path):
        async with store_backend(request.param, tmp_path) as store:
            yield store

:func:`database_url` gives a fresh, empty database as a URL instead, for tests
that configure stepline the way a user does.

PostgreSQL tests use ``STEPLINE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When that server cannot be
reached they are skipped, unless ``STEPLINE_REQUIRE_POSTGRES=1`` makes it a
failure (CI sets it). Each PostgreSQL store lives in a schema of its own (its
Alembic version table too) and each URL in a database of its own; both are
dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from stepline.store import MemoryStore, SqlStore, StepStore
from stepline.store._engines import create_store_engine
from stepline.store._migrate import migrate_engine
from stepline.store._urls import normalize_database_url

__all__ = [
    "KINDS",
    "SQL_KINDS",
    "backend_params",
    "database_url",
    "postgres_url",
    "store_backend",
]

KINDS = ("memory", "sqlite", "postgres")
SQL_KINDS = ("sqlite", "postgres")

_DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_CONNECT_TIMEOUT = 5.0
_reachable: dict[str, str | None] = {}


def backend_params(kinds: Iterable[str] = KINDS) -> list[Any]:
    """Parameters for a fixture over ``kinds``; PostgreSQL ones carry the ``postgres`` mark."""
    return [
        pytest.param(kind, id=kind, marks=[pytest.mark.postgres] if kind == "postgres" else [])
        for kind in kinds
    ]


def postgres_url() -> str:
    """The test server's URL, as configured (not yet normalised)."""
    return os.environ.get("STEPLINE_TEST_POSTGRES_URL", _DEFAULT_POSTGRES_URL)


@asynccontextmanager
async def store_backend(kind: str, tmp_path: Path) -> AsyncIterator[StepStore]:
    """A migrated, empty store of ``kind``, closed (and its data dropped) afterwards."""
    if kind == "memory":
        yield MemoryStore()
    elif kind == "sqlite":
        engine = create_store_engine(f"sqlite:///{tmp_path / 'stepline.db'}")
        async with _migrated(engine) as store:
            yield store
    elif kind == "postgres":
        async with _admin_engine() as admin:
            schema = f"stepline_test_{uuid.uuid4().hex[:12]}"
            async with admin.connect() as connection:
                await connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            try:
                engine = create_store_engine(
                    postgres_url(),
                    connect_args={
                        "server_settings": {"search_path": schema},
                        "timeout": _CONNECT_TIMEOUT,
                    },
                )
                async with _migrated(engine) as store:
                    yield store
            finally:
                async with admin.connect() as connection:
                    await connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    else:
        raise ValueError(f"unknown store backend {kind!r}")


@asynccontextmanager
async def database_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty (unmigrated) database of ``kind``, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'stepline-{uuid.uuid4().hex[:12]}.db'}"
    elif kind == "postgres":
        async with _admin_engine() as admin:
            name = f"stepline_test_{uuid.uuid4().hex[:12]}"
            async with admin.connect() as connection:
                await connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
            try:
                yield str(sa.make_url(postgres_url()).set(database=name))
            finally:
                async with admin.connect() as connection:
                    await connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    else:
        raise ValueError(f"no database URL for backend {kind!r}")


@asynccontextmanager
async def _migrated(engine: AsyncEngine) -> AsyncIterator[SqlStore]:
    store = SqlStore(engine)
    try:
        await migrate_engine(engine)
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _admin_engine() -> AsyncIterator[AsyncEngine]:
    """An autocommit engine on the test server, or a skip (a failure in CI) if it is down."""
    url = postgres_url()
    engine = create_async_engine(
        normalize_database_url(url),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": _CONNECT_TIMEOUT},
    )
    try:
        if url not in _reachable:
            _reachable[url] = await _probe(engine)
        problem = _reachable[url]
        if problem is not None:
            shown = sa.make_url(url).render_as_string(hide_password=True)
            message = (
                f"PostgreSQL at {shown} is not reachable ({problem}); to run these tests, "
                "start one and set STEPLINE_TEST_POSTGRES_URL (default "
                f"{_DEFAULT_POSTGRES_URL})"
            )
            if os.environ.get("STEPLINE_REQUIRE_POSTGRES") == "1":
                pytest.fail(message)
            pytest.skip(message)
        yield engine
    finally:
        await engine.dispose()


async def _probe(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None
