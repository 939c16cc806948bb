"""The schema's revisions: those this stepline ships and the one a database is at.

Both are read without SQLAlchemy or Alembic: the shipped ones from the
migration files, a database's on a driver (:mod:`stepline.store._drivers`),
so a server whose database is at the head loads neither. Migrating is
:mod:`stepline.store._migrate`'s (loaded by :func:`migrate` when it runs).

Invariants:

* The schema changes only through the numbered migrations, one line of them;
  :func:`shipped_revisions` reads that line from the files.
* A database's revision is the one row of :data:`VERSION_TABLE`; a database
  without that table has none yet (None).
* Failures surface as :class:`~stepline.errors.StoreError`, caused by the
  driver's own error.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from stepline.errors import StoreError
from stepline.store._drivers import Driver, open_driver

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "current_revision",
    "database_revision",
    "head_revision",
    "migrate",
    "shipped_revisions",
]

#: Alembic's version table; named for stepline so it can share a database
#: with an application that runs its own Alembic migrations
VERSION_TABLE = "stepline_alembic_version"

#: the Alembic scripts of stepline's migrations, inside the package
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

_REVISION_LINE = re.compile(r'^(revision|down_revision)\b[^=\n]*=\s*(?:"([^"]+)"|None)', re.M)


@functools.cache
def shipped_revisions() -> tuple[str, ...]:
    """The migrations this stepline ships, oldest first.

    Read from the files' ``revision``/``down_revision`` lines, so a server at
    the head never imports Alembic (a test checks this against Alembic's own
    reading)."""
    previous: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("[0-9]*.py")):
        found = {m.group(1): m.group(2) for m in _REVISION_LINE.finditer(path.read_text())}
        previous[str(found["revision"])] = found.get("down_revision")
    newer = {down: rev for rev, down in previous.items()}
    chain: list[str] = []
    current = newer.get(None)
    while current is not None:
        chain.append(current)
        current = newer.get(current)
    if len(chain) != len(previous):  # pragma: no cover - the package ships one line
        raise StoreError("stepline's migrations do not form one line")
    return tuple(chain)


def head_revision() -> str:
    """The newest migration this version of stepline ships."""
    return shipped_revisions()[-1]


_HAS_TABLE_SQLITE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1"
#: the table as an unqualified name finds it: on the search path, as Alembic looks
_HAS_TABLE_POSTGRES = "SELECT 1 WHERE to_regclass($1::text) IS NOT NULL"
_VERSION = f"SELECT version_num FROM {VERSION_TABLE}"


async def database_revision(driver: Driver) -> str | None:
    """The revision the database behind ``driver`` is at; None before any migration."""
    try:
        has_table = _HAS_TABLE_POSTGRES if driver.postgres else _HAS_TABLE_SQLITE
        if not await driver.fetch(has_table, VERSION_TABLE):
            return None
        rows = await driver.fetch(_VERSION)
    except StoreError as exc:
        cause = exc.__cause__ or exc
        raise StoreError(
            f"reading the schema revision failed: {type(cause).__name__}: {cause}"
        ) from cause
    return str(rows[0][0]) if rows else None


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before any migration."""
    driver = await open_driver(url, size=1)
    try:
        return await database_revision(driver)
    finally:
        await driver.close()


async def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the head revision (SQLAlchemy and Alembic
    load here)."""
    from stepline.store._migrate import migrate_url

    await migrate_url(url)
