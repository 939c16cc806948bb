"""Database URLs: the two stepline speaks, mapped onto their drivers, without SQLAlchemy.

A serving process reads its URL here (to open the hot path's driver, to
probe its database at start-up) and imports SQLAlchemy only when a path off
the hot one first needs an engine (:mod:`stepline.store._engines`).

Invariants:

* A URL is one of the two stepline speaks (``sqlite:///path``,
  ``postgresql://...``); anything else is a
  :class:`~stepline.errors.ConfigError` that never shows the password.
* The SQLite file and the PostgreSQL DSN read from a URL are those
  SQLAlchemy reads from it (its path percent-decoded, without the query), so
  the drivers and the engine always meet the same database.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from stepline.errors import ConfigError

__all__ = ["normalize_database_url", "postgres_dsn", "redact_password", "sqlite_path"]

_SQLITE = "sqlite+aiosqlite://"
_POSTGRES = "postgresql+asyncpg://"


def normalize_database_url(url: str) -> str:
    """Map a user's database URL onto the async driver stepline uses.

    ``sqlite:///path`` becomes ``sqlite+aiosqlite:///path``; ``postgresql://``,
    ``postgres://`` and ``postgresql+asyncpg://`` become ``postgresql+asyncpg://``.
    Anything else raises :class:`~stepline.errors.ConfigError`.
    """
    scheme, separator, rest = url.partition("://")
    if separator:
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            path = rest[1:] if rest.startswith("/") else ""
            if path and path != ":memory:":
                return f"{_SQLITE}{rest}"
        elif scheme in ("postgresql", "postgres", "postgresql+asyncpg") and rest:
            return f"{_POSTGRES}{rest}"
    raise ConfigError(
        f"unsupported database URL {redact_password(url)!r}: "
        "use sqlite:///path/to/file.db or postgresql://user@host/dbname"
    )


def redact_password(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (as SQLAlchemy reads it); None for PostgreSQL."""
    normalized = normalize_database_url(url)
    if not normalized.startswith(_SQLITE):
        return None
    return unquote(normalized.removeprefix(_SQLITE)[1:].partition("?")[0])


def postgres_dsn(url: str) -> str:
    """The ``postgresql://`` DSN asyncpg connects to for a PostgreSQL URL."""
    normalized = normalize_database_url(url)
    if not normalized.startswith(_POSTGRES):
        raise ValueError(f"not a PostgreSQL URL: {redact_password(url)!r}")
    return "postgresql://" + normalized.removeprefix(_POSTGRES)
