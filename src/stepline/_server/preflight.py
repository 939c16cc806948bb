"""Database checks made before a command uses its database, each failure one ConfigError line.

``stepline serve`` probes its database before it listens, then migrates it; a
bad URL, a missing SQLite directory or an unreachable PostgreSQL stops it with
a line that names the database (password hidden). The server reads the
database's revision itself and, only when it is behind, runs ``stepline
migrate`` in a child process: Alembic and its templates never load into the
process that serves (some 7 MB it would keep for its whole life). Every check
runs on the store's drivers (:mod:`stepline.store._drivers`), so the serving
process does not load SQLAlchemy for them either. The commands that only read
(``responses list``, ``keys list``...) check that the database exists and has
stepline's schema, and never create one: connecting to a SQLite file that is
not there creates it, so a missing file is found by looking, not by connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from stepline.errors import ConfigError, StoreError
from stepline.store._drivers import Driver, open_driver
from stepline.store._revisions import database_revision, head_revision, shipped_revisions
from stepline.store._urls import normalize_database_url, redact_password, sqlite_path

__all__ = [
    "CONNECT_TIMEOUT",
    "check_creatable",
    "check_schema",
    "database_label",
    "migrate_database",
    "migrate_in_child",
    "probe_database",
]

#: seconds a PostgreSQL server may take to accept a connection before start-up gives up
CONNECT_TIMEOUT = 10.0

_FIRST = "run `stepline migrate` (or `stepline serve`) first, or pass another --database"


def _sqlite_path(url: str) -> Path | None:
    path = sqlite_path(url)
    return None if path is None else Path(path)


def database_label(url: str) -> str:
    """``url`` as shown to a person: its password hidden, a relative SQLite path resolved.

    A ConfigError when stepline cannot use the URL at all."""
    normalize_database_url(url)
    shown = redact_password(url)
    path = _sqlite_path(url)
    if path is not None and not path.is_absolute():
        shown += f" ({path.resolve()})"
    return shown


@contextlib.asynccontextmanager
async def _connected(url: str) -> AsyncIterator[Driver]:
    """A driver on the database at ``url``, with one connection (the hot path's own
    kind: nothing here loads SQLAlchemy), closed on leaving. A StoreError, caused by
    the driver's own error, when it cannot connect."""
    postgres = _sqlite_path(url) is None
    driver = await open_driver(
        url, size=1, connect_args={"timeout": CONNECT_TIMEOUT} if postgres else None
    )
    try:
        yield driver
    finally:
        await driver.close()


def _reason(exc: BaseException) -> str:
    """The driver's error ``exc``, on one line."""
    cause = exc
    if cause.__cause__ is not None and str(cause.__cause__) == str(cause):
        cause = cause.__cause__  # SQLAlchemy's asyncpg adapter hides the driver's class name
    if isinstance(cause, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


async def probe_database(url: str) -> bool:
    """Whether the database at ``url`` exists; a ConfigError when it cannot be reached.

    A SQLite file that is not there is not created: it does not exist (yet)."""
    label = database_label(url)
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        return False
    try:
        async with _connected(url) as driver:
            await driver.fetch("SELECT 1")
    except StoreError as exc:
        reason = _reason(exc.__cause__) if exc.__cause__ is not None else exc.message
        raise ConfigError(f"cannot open the database {label}: {reason}") from exc
    return True


def check_creatable(url: str) -> None:
    """A ConfigError when the SQLite file of ``url`` cannot be created where it is named."""
    path = _sqlite_path(url)
    if path is None or path.exists():
        return
    directory = path.resolve().parent
    if not directory.is_dir():
        problem = f"the directory {directory} does not exist"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = f"the directory {directory} is not writable"
    else:
        return
    raise ConfigError(f"cannot create the database {database_label(url)}: {problem}")


async def migrate_database(url: str) -> None:
    """Upgrade the database at ``url`` to the schema of this stepline; a ConfigError
    names the database when that fails."""
    # the command that migrates (``stepline migrate``, a server's child) loads
    # SQLAlchemy and Alembic; the server that serves never runs this
    from sqlalchemy.exc import DBAPIError

    from stepline.store._engines import create_store_engine
    from stepline.store._migrate import migrate_engine

    label = database_label(url)
    postgres = _sqlite_path(url) is None
    engine = create_store_engine(
        url, pool_size=1, connect_args={"timeout": CONNECT_TIMEOUT} if postgres else None
    )
    try:
        await migrate_engine(engine)
    except StoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, DBAPIError) and cause.orig is not None:
            cause = cause.orig  # the driver's error: SQLAlchemy's own repeats the statement
        reason = _reason(cause) if cause is not None else exc.message
        raise ConfigError(f"cannot migrate the database {label}: {reason}") from exc
    except _alembic_command_error() as exc:  # a revision this stepline does not know
        raise ConfigError(f"cannot migrate the database {label}: {exc}") from exc
    finally:
        await engine.dispose()


async def _is_current(url: str) -> bool:
    """Whether the database at ``url`` is at this stepline's head revision (read with
    one query, no Alembic); False when its revision cannot be read."""
    try:
        async with _connected(url) as driver:
            return await database_revision(driver) == head_revision()
    except StoreError:
        return False  # the child migrating it says what is wrong


#: the prefix of the child's one error line (see ``stepline._cli._fail``)
_CHILD_ERROR = "error: "


async def migrate_in_child(url: str) -> None:
    """As :func:`migrate_database`, but Alembic runs in a child ``stepline migrate``,
    and only when the database exists and is behind (or does not exist yet).

    The child's one error line becomes this ConfigError. The URL goes to it in its
    environment, not its arguments: a password in it stays out of the process list."""
    if await probe_database(url) and await _is_current(url):
        return
    environment = {**os.environ, "STEPLINE_DATABASE_URL": url}
    for name in ("STEPLINE_DEBUG", "FORCE_COLOR"):  # the child's error: one plain line
        environment.pop(name, None)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stepline",
        "migrate",
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await child.communicate()
    if child.returncode == 0:
        return
    lines = stderr.decode(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith(_CHILD_ERROR)]
    if errors:
        raise ConfigError(errors[-1].removeprefix(_CHILD_ERROR))
    raise ConfigError(
        f"cannot migrate the database {database_label(url)}: "
        f"`stepline migrate` exited with status {child.returncode}"
    )


def _alembic_command_error() -> type[Exception]:
    """Alembic's error for a revision it does not know (imported only when one is raised:
    a server whose database is at the head never imports Alembic)."""
    from alembic.util import CommandError

    return CommandError


async def check_schema(url: str) -> None:
    """A ConfigError unless the database at ``url`` exists and has this stepline's schema."""
    label = database_label(url)
    if not await probe_database(url):
        raise ConfigError(f"no database at {label}: {_FIRST}")
    try:
        async with _connected(url) as driver:
            revision = await database_revision(driver)
    except StoreError as exc:
        reason = _reason(exc.__cause__) if exc.__cause__ is not None else exc.message
        raise ConfigError(f"cannot read the database {label}: {reason}") from exc
    if revision is None:
        raise ConfigError(f"the database {label} has no schema yet: {_FIRST}")
    head = head_revision()
    if revision == head:
        return
    if revision in shipped_revisions():
        raise ConfigError(
            f"the database {label} has an older schema ({revision}, not {head}): "
            "run `stepline migrate`"
        )
    raise ConfigError(
        f"the database {label} has a schema ({revision}) from a newer stepline: upgrade stepline"
    )
