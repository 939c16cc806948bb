"""Alembic environment for stepline's schema.

stepline runs its migrations programmatically (``stepline.store._revisions.migrate_engine``):
the caller opens the async engine, takes a connection inside one transaction
and hands it over as ``config.attributes["connection"]``; this module then
runs synchronously on it (it is called through ``AsyncConnection.run_sync``).
Without a connection it opens its own async engine from the ``url`` attribute
(or the ``sqlalchemy.url`` option), so Alembic's own commands work too.

The version table is :data:`stepline.store._schema.VERSION_TABLE`, so stepline
can share a database with an application's own Alembic history.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from stepline.errors import ConfigError
from stepline.store._schema import VERSION_TABLE, metadata

config = context.config


def _url() -> str:
    from stepline.store._urls import normalize_database_url

    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise ConfigError("no database URL given to the stepline migrations")
    return normalize_database_url(str(url))


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine() -> None:
    from stepline.store._engines import create_store_engine

    engine = create_store_engine(_url(), pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_on(connection)
    else:
        asyncio.run(_run_with_own_engine())


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
