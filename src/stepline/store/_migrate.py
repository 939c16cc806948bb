"""Migrating a database to the head revision: Alembic, over the scripts in ``migrations/``,
on a SQLAlchemy engine.

Only ``stepline migrate`` (the child a server starts when its database is
behind), :func:`~stepline.store.open_store` with ``migrate=True`` and the
tests import this module; a server whose database is at the head reads its
revision on a driver (:mod:`stepline.store._revisions`) and never loads it.

Invariants:

* Migrating runs in one transaction, and Alembic runs only when the database
  is behind. On PostgreSQL the transaction holds an advisory lock, and on
  SQLite it begins ``IMMEDIATE``: processes that start together migrate one
  after the other, and the second finds nothing to do.
* Failures surface as :class:`~stepline.errors.StoreError` (an unknown
  revision as Alembic's own ``CommandError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from stepline.errors import StoreError
from stepline.store._engines import create_store_engine, describe_error
from stepline.store._revisions import MIGRATIONS_DIR, VERSION_TABLE, head_revision

if TYPE_CHECKING:  # Alembic is imported only to migrate
    from alembic.config import Config

__all__ = ["alembic_config", "migrate_engine", "migrate_url"]

#: PostgreSQL advisory lock held while migrating ("Stepline" as 8 ASCII bytes),
#: so processes that start together migrate one after the other
_MIGRATION_LOCK_KEY = int.from_bytes(b"Stepline", "big")


def alembic_config() -> Config:
    """The Alembic config of stepline's migrations, found inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


async def migrate_engine(engine: AsyncEngine) -> None:
    """Upgrade the database behind ``engine`` to the head revision (Alembic runs only
    when there is something to do)."""
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            if await connection.run_sync(_revision_of) != head_revision():
                await connection.run_sync(_upgrade_to_head)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"migrating the store failed: {describe_error(exc)}") from exc


def _upgrade_to_head(connection: sa.Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _revision_of(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    versions = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))
    return connection.execute(sa.select(versions.c.version_num)).scalar()


async def migrate_url(url: str) -> None:
    """Upgrade the database at ``url`` to the head revision."""
    engine = create_store_engine(url, pool_size=1)
    try:
        await migrate_engine(engine)
    finally:
        await engine.dispose()
