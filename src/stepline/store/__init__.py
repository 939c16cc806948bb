"""The durable store: responses, their step chains, event logs and leases, and the
API keys created with ``stepline keys create``.

:class:`StepStore` is the interface the loop and the server use (its ``keys``
are a :class:`~stepline.store._keys.KeyStore` of their own);
:class:`MemoryStore` keeps everything in memory, :class:`SqlStore` keeps it
in SQLite or PostgreSQL (open one with :func:`open_store`). Both pass the same
test suite. Every SQL table is declared in ``store/_schema.py`` and changes
only through the numbered migrations that ship in ``stepline/store/migrations``.

Importing this package imports no SQLAlchemy: a :class:`SqlStore` runs a
response's statements, its keys and its revision on the drivers, and loads
SQLAlchemy (its engine, Alembic to migrate) on the first call off that path.
"""

from stepline.store._base import TERMINAL_STATUSES, EventRow, ResponseRecord, StepStore
from stepline.store._memory import MemoryStore
from stepline.store._revisions import migrate
from stepline.store._sql import SqlStore, open_store
from stepline.store._urls import normalize_database_url

__all__ = [
    "TERMINAL_STATUSES",
    "EventRow",
    "MemoryStore",
    "ResponseRecord",
    "SqlStore",
    "StepStore",
    "migrate",
    "normalize_database_url",
    "open_store",
]
