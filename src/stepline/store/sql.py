"""SqlStore: the StepStore on SQLite (aiosqlite) or PostgreSQL (asyncpg).

The store speaks SQLAlchemy Core (no ORM) through prebuilt statements. Each
call is one short unit of work: a call that needs a single statement runs it
in autocommit, one round trip; a call that needs several (``record_steps``,
``delete_response``, the ``append_events`` batch) runs them in one
transaction.

Invariants beyond the :class:`~stepline.store.base.StepStore` contract:

* SQLite runs in WAL mode with ``synchronous=NORMAL``, a 10 s busy timeout
  and foreign keys on, and every transaction begins ``IMMEDIATE``: a
  transaction that reads before it writes would otherwise fail with
  SQLITE_BUSY when two of them try to upgrade their locks at once.
* ``record_steps`` locks the response row (``FOR UPDATE`` on PostgreSQL, the
  write lock of the IMMEDIATE transaction on SQLite) before it reads the last
  sequence, so concurrent calls queue instead of colliding.
* ``claim_expired`` is one ``UPDATE`` over a ``FOR UPDATE SKIP LOCKED``
  subquery, so two claimers never take the same response.
* On SQLite, the writes of one process queue on an asyncio lock, so they
  never meet SQLite's busy handler (which sleeps in growing steps).
* A write that has started is not abandoned when its caller is cancelled: it
  runs in its own task, the caller waits for it and then sees the
  cancellation. Driver connections are never left mid-statement.
* Database failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from stepline.engine.steps import NewStep, Step, StepKind, StepState
from stepline.errors import ConfigError, StoreError
from stepline.store import conversations, listing
from stepline.store.base import (
    TERMINAL_STATUSES,
    ConversationItem,
    ConversationRecord,
    EndResult,
    EventRow,
    ResponseEnd,
    ResponseRecord,
    StepEnd,
    new_steps,
)
from stepline.store.listing import ResponsePage, ResponseQuery, ResponseTree
from stepline.store.notify import CHANNEL, EventNotifier, EventWatch, PgListener
from stepline.store.schema import VERSION_TABLE, JsonText, events, items, responses, steps

__all__ = [
    "SqlStore",
    "alembic_config",
    "create_store_engine",
    "current_revision",
    "engine_revision",
    "head_revision",
    "migrate",
    "migrate_engine",
    "normalize_database_url",
    "open_store",
]

_T = TypeVar("_T")

_MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: PostgreSQL advisory lock held while migrating ("Stepline" as 8 ASCII bytes),
#: so processes that start together migrate one after the other
_MIGRATION_LOCK_KEY = int.from_bytes(b"Stepline", "big")
#: execution option of the autocommit engine on SQLite: skip our BEGIN IMMEDIATE
_SQLITE_AUTOCOMMIT = "stepline_sqlite_autocommit"
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)

_TERMINAL = sorted(TERMINAL_STATUSES)
_LIVE_STEP_STATES = [StepState.PENDING.value, StepState.PROCESSING.value]


# -- URLs and engines ---------------------------------------------------------


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
                return f"sqlite+aiosqlite://{rest}"
        elif scheme in ("postgresql", "postgres", "postgresql+asyncpg") and rest:
            return f"postgresql+asyncpg://{rest}"
    raise ConfigError(
        f"unsupported database URL {_redact(url)!r}: "
        "use sqlite:///path/to/file.db or postgresql://user@host/dbname"
    )


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def create_store_engine(
    url: str, *, pool_size: int = 10, connect_args: Mapping[str, Any] | None = None
) -> AsyncEngine:
    """An async engine for ``url``, set up the way :class:`SqlStore` relies on.

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
    return engine


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


def _autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_AUTOCOMMIT: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


# -- migrations ---------------------------------------------------------------


def alembic_config() -> Config:
    """The Alembic config of stepline's migrations, found inside the package."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest migration this version of stepline ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise StoreError("stepline ships no migrations")
    return head


async def migrate_engine(engine: AsyncEngine) -> None:
    """Upgrade the database behind ``engine`` to the head revision."""
    try:
        async with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            await connection.run_sync(_upgrade_to_head)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"migrating the store failed: {_describe(exc)}") from exc


def _upgrade_to_head(connection: sa.Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def engine_revision(engine: AsyncEngine) -> str | None:
    """The revision the database behind ``engine`` is at; None before any migration."""
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_revision_of)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"reading the schema revision failed: {_describe(exc)}") from exc


def _revision_of(connection: sa.Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


async def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the head revision."""
    engine = create_store_engine(url, pool_size=1)
    try:
        await migrate_engine(engine)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before any migration."""
    engine = create_store_engine(url, pool_size=1)
    try:
        return await engine_revision(engine)
    finally:
        await engine.dispose()


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


# -- statements ---------------------------------------------------------------
#
# Built once: SQLAlchemy caches their compiled form, so a call only binds values.

_GET_RESPONSE = sa.select(responses).where(responses.c.id == sa.bindparam("p_id"))
_LIST_RESPONSES = (
    sa.select(responses)
    .order_by(responses.c.created_at.desc(), responses.c.id.desc())
    .limit(sa.bindparam("p_limit"))
)
_SET_STATUS = (
    sa.update(responses)
    .where(responses.c.id == sa.bindparam("p_id"), responses.c.status.not_in(_TERMINAL))
    .values(status=sa.bindparam("p_status"))
)
_FINISH_RESPONSE = (
    sa.update(responses)
    .where(responses.c.id == sa.bindparam("p_id"), responses.c.status.not_in(_TERMINAL))
    .values(
        status=sa.bindparam("p_status"),
        result=sa.bindparam("p_result", type_=JsonText()),
        completed_at=sa.bindparam("p_completed_at", type_=sa.Double()),
        owner=None,
        lease_expires_at=None,
    )
)
_INSERT_ITEM = sa.insert(items)
_FIND_ITEMS = (
    sa.select(items.c.id, items.c.data)
    .join(responses, responses.c.id == items.c.response_id)
    .where(
        items.c.id.in_(sa.bindparam("p_ids", expanding=True)),
        responses.c.key_id.is_not_distinct_from(sa.bindparam("p_key", type_=sa.String())),
    )
    .order_by(responses.c.created_at, items.c.position)
)


async def _finish_response_in(connection: AsyncConnection, end: ResponseEnd) -> bool:
    """Finish a live response and keep its items, on an open connection."""
    if end.status not in TERMINAL_STATUSES:
        raise ValueError(f"{end.status!r} is not a terminal status")
    params = {
        "p_id": end.response_id,
        "p_status": end.status,
        "p_result": end.result,
        "p_completed_at": end.completed_at,
    }
    finished = (await connection.execute(_FINISH_RESPONSE, params)).rowcount == 1
    rows = [
        {"response_id": end.response_id, "position": position, "id": item["id"], "data": item}
        for position, item in enumerate(end.items)
        if item.get("id")
    ]
    if finished and rows:
        await connection.execute(_INSERT_ITEM, rows)
    if finished and end.conversation_id is not None:
        await conversations.append_items(connection, end.conversation_id, end.conversation_items)
    return bool(finished)


_DELETE_ITEMS = sa.delete(items).where(items.c.response_id == sa.bindparam("p_id"))
_DELETE_EVENTS = sa.delete(events).where(events.c.response_id == sa.bindparam("p_id"))
_DELETE_STEPS = sa.delete(steps).where(steps.c.response_id == sa.bindparam("p_id"))
_DELETE_RESPONSE = sa.delete(responses).where(responses.c.id == sa.bindparam("p_id"))

_LOCK_RESPONSE = (
    sa.select(responses.c.id).where(responses.c.id == sa.bindparam("p_id")).with_for_update()
)
_LAST_SEQUENCE = (
    sa.select(sa.func.max(steps.c.sequence))
    .where(steps.c.response_id == sa.bindparam("p_id"))
    .scalar_subquery()
)


def _last_of_scope(scope_clause: sa.ColumnElement[bool]) -> sa.ScalarSelect[Any]:
    return (
        sa.select(steps.c.id)
        .where(steps.c.response_id == sa.bindparam("p_id"), scope_clause)
        .order_by(steps.c.sequence.desc())
        .limit(1)
        .scalar_subquery()
    )


_CHAIN_TAIL_TOP = sa.select(_LAST_SEQUENCE, _last_of_scope(steps.c.scope.is_(None)))
_CHAIN_TAIL_SCOPED = sa.select(
    _LAST_SEQUENCE, _last_of_scope(steps.c.scope == sa.bindparam("p_scope"))
)
_INSERT_STEPS = sa.insert(steps)
_START_STEP = (
    sa.update(steps)
    .where(steps.c.id == sa.bindparam("p_id"), steps.c.state.in_(_LIVE_STEP_STATES))
    .values(
        state=StepState.PROCESSING.value,
        attempt=steps.c.attempt + 1,
        started_at=sa.bindparam("p_now", type_=sa.Double()),
    )
    .returning(*steps.c)
)
_STEP_STATE = sa.select(steps.c.state).where(steps.c.id == sa.bindparam("p_id"))
_FINISH_STEP = (
    sa.update(steps)
    .where(steps.c.id == sa.bindparam("p_id"), steps.c.state == StepState.PROCESSING.value)
    .values(
        state=sa.bindparam("p_state"),
        response=sa.bindparam("p_response", type_=JsonText()),
        error=sa.bindparam("p_error", type_=JsonText()),
        finished_at=sa.bindparam("p_now", type_=sa.Double()),
    )
    .returning(*steps.c)
)
_CANCEL_STEPS = (
    sa.update(steps)
    .where(
        steps.c.response_id == sa.bindparam("p_id"),
        steps.c.state.in_(_LIVE_STEP_STATES),
    )
    .values(
        state=StepState.CANCELLED.value,
        finished_at=sa.bindparam("p_now", type_=sa.Double()),
    )
)
_LOAD_STEPS = (
    sa.select(steps).where(steps.c.response_id == sa.bindparam("p_id")).order_by(steps.c.sequence)
)
_LOAD_CHAIN_TOP = _LOAD_STEPS.where(steps.c.scope.is_(None))
_LOAD_CHAIN_SCOPED = _LOAD_STEPS.where(steps.c.scope == sa.bindparam("p_scope"))

_READ_EVENTS = (
    sa.select(events)
    .where(events.c.response_id == sa.bindparam("p_id"), events.c.seq > sa.bindparam("p_after"))
    .order_by(events.c.seq)
    .limit(sa.bindparam("p_limit"))
)
_STEP_EVENTS = (
    sa.select(events)
    .where(events.c.response_id == sa.bindparam("p_id"), events.c.step_id == sa.bindparam("p_step"))
    .order_by(events.c.seq)
)
_NOTIFY = sa.text(f"SELECT pg_notify('{CHANNEL}', id) FROM unnest(CAST(:p_ids AS text[])) AS id")
_LAST_EVENT_SEQ = sa.select(sa.func.max(events.c.seq)).where(
    events.c.response_id == sa.bindparam("p_id")
)

_RENEW_LEASES = (
    sa.update(responses)
    .where(
        responses.c.owner == sa.bindparam("p_owner"),
        responses.c.id.in_(sa.bindparam("p_ids", expanding=True)),
        responses.c.status.not_in(_TERMINAL),
    )
    .values(lease_expires_at=sa.bindparam("p_expires_at", type_=sa.Double()))
    .returning(responses.c.id)
)
_RELEASE_LEASE = (
    sa.update(responses)
    .where(responses.c.id == sa.bindparam("p_id"), responses.c.owner == sa.bindparam("p_owner"))
    .values(owner=None, lease_expires_at=None)
)
_CLAIMABLE = (
    sa.select(responses.c.id)
    .where(
        responses.c.status.not_in(_TERMINAL),
        sa.or_(
            responses.c.lease_expires_at.is_(None),
            responses.c.lease_expires_at < sa.bindparam("p_now", type_=sa.Double()),
        ),
    )
    .order_by(responses.c.created_at, responses.c.id)
    .limit(sa.bindparam("p_limit"))
    # PostgreSQL only; SQLite renders nothing and relies on its single writer.
    .with_for_update(skip_locked=True)
)
_CLAIM_EXPIRED = (
    sa.update(responses)
    .where(responses.c.id.in_(_CLAIMABLE))
    .values(
        owner=sa.bindparam("p_owner"),
        lease_expires_at=sa.bindparam("p_expires_at", type_=sa.Double()),
    )
    .returning(responses.c.id)
)


def _insert_events(dialect: str) -> sa.Insert:
    # Both dialects spell "keep the first row of a key" the same way.
    insert = sqlite.insert(events) if dialect == "sqlite" else postgresql.insert(events)
    return insert.on_conflict_do_nothing(index_elements=[events.c.response_id, events.c.seq])


# -- rows ---------------------------------------------------------------------


def _record_from_row(row: sa.Row[Any]) -> ResponseRecord:
    return ResponseRecord(
        id=row.id,
        created_at=row.created_at,
        status=row.status,
        model=row.model,
        body=row.body,
        previous_response_id=row.previous_response_id,
        store=row.store,
        background=row.background,
        owner=row.owner,
        lease_expires_at=row.lease_expires_at,
        result=row.result,
        completed_at=row.completed_at,
        key_id=row.key_id,
    )


def _step_from_row(row: sa.Row[Any]) -> Step:
    return Step(
        id=row.id,
        response_id=row.response_id,
        scope=row.scope,
        previous_step_id=row.previous_step_id,
        sequence=row.sequence,
        kind=StepKind(row.kind),
        state=StepState(row.state),
        request=row.request,
        response=row.response,
        error=row.error,
        call_id=row.call_id,
        attempt=row.attempt,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _step_values(step: Step) -> dict[str, Any]:
    return {
        "id": step.id,
        "response_id": step.response_id,
        "scope": step.scope,
        "previous_step_id": step.previous_step_id,
        "sequence": step.sequence,
        "kind": step.kind.value,
        "state": step.state.value,
        "request": step.request,
        "response": step.response,
        "error": step.error,
        "call_id": step.call_id,
        "attempt": step.attempt,
        "created_at": step.created_at,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def _describe(exc: BaseException) -> str:
    # SQLAlchemy's own message repeats the statement and its parameters, which
    # may hold whole payloads; the driver's message is what a reader needs.
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}"
    return f"{type(exc).__name__}: {exc}"


# -- the store ----------------------------------------------------------------


class SqlStore:
    """A :class:`~stepline.store.base.StepStore` on an SQLAlchemy async engine.

    Build it with :func:`open_store`, or from an engine made by
    :func:`create_store_engine` (the engine must be set up that way, and its
    database migrated with :func:`migrate_engine`).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._autocommit = _autocommit_engine(engine)
        self._insert_events = _insert_events(engine.dialect.name)
        self._writes: set[asyncio.Task[Any]] = set()
        self._postgres = engine.dialect.name == "postgresql"
        self._sqlite_writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._notifier = EventNotifier()
        self._listener: PgListener | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def current_revision(self) -> str | None:
        """The schema revision of the database; compare with :func:`head_revision`."""
        return await engine_revision(self._engine)

    # -- responses --

    async def create_response(self, record: ResponseRecord) -> None:
        values = {
            "id": record.id,
            "created_at": record.created_at,
            "status": record.status,
            "model": record.model,
            "body": record.body,
            "previous_response_id": record.previous_response_id,
            "store": record.store,
            "background": record.background,
            "owner": record.owner,
            "lease_expires_at": record.lease_expires_at,
            "result": record.result,
            "completed_at": record.completed_at,
            "key_id": record.key_id,
        }

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(sa.insert(responses), values)

        await self._write(work)

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        async def work(connection: AsyncConnection) -> ResponseRecord | None:
            row = (await connection.execute(_GET_RESPONSE, {"p_id": response_id})).first()
            return None if row is None else _record_from_row(row)

        return await self._read(work)

    async def list_responses(self, *, limit: int = 20) -> list[ResponseRecord]:
        async def work(connection: AsyncConnection) -> list[ResponseRecord]:
            result = await connection.execute(_LIST_RESPONSES, {"p_limit": limit})
            return [_record_from_row(row) for row in result]

        return await self._read(work)

    async def set_status(self, response_id: str, status: str) -> None:
        if status in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is terminal: use finish_response")

        async def work(connection: AsyncConnection) -> None:
            await connection.execute(_SET_STATUS, {"p_id": response_id, "p_status": status})

        await self._write(work)

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

        async def work(connection: AsyncConnection) -> bool:
            return await _finish_response_in(connection, end)

        return await self._write(work, transaction=bool(items))

    async def find_items(
        self, item_ids: Sequence[str], *, key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        params = {"p_ids": list(dict.fromkeys(item_ids)), "p_key": key_id}

        async def work(connection: AsyncConnection) -> dict[str, dict[str, Any]]:
            result = await connection.execute(_FIND_ITEMS, params)
            return {row.id: row.data for row in result}

        return await self._read(work)

    async def delete_response(self, response_id: str) -> bool:
        params = {"p_id": response_id}

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(_DELETE_EVENTS, params)
            await connection.execute(_DELETE_ITEMS, params)
            await connection.execute(_DELETE_STEPS, params)
            return (await connection.execute(_DELETE_RESPONSE, params)).rowcount == 1

        return await self._write(work, transaction=True)

    # -- steps --

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        if not steps:
            return []
        params = {"p_id": response_id, "p_scope": scope}
        chain_tail = _CHAIN_TAIL_TOP if scope is None else _CHAIN_TAIL_SCOPED

        async def work(connection: AsyncConnection) -> list[Step]:
            locked = await connection.execute(_LOCK_RESPONSE, params)
            if locked.first() is None:
                raise StoreError(f"cannot record steps: no response {response_id!r}")
            last_sequence, previous_step_id = (await connection.execute(chain_tail, params)).one()
            recorded = new_steps(
                response_id,
                scope=scope,
                previous_step_id=previous_step_id,
                last_sequence=last_sequence or 0,
                steps=steps,
                start=start,
            )
            await connection.execute(_INSERT_STEPS, [_step_values(step) for step in recorded])
            return recorded

        return await self._write(work, transaction=True)

    async def start_step(self, step_id: str) -> Step:
        async def work(connection: AsyncConnection) -> Step:
            result = await connection.execute(_START_STEP, {"p_id": step_id, "p_now": time.time()})
            row = result.first()
            if row is not None:
                return _step_from_row(row)
            state = (await connection.execute(_STEP_STATE, {"p_id": step_id})).scalar()
            if state is None:
                raise StoreError(f"cannot start step {step_id!r}: no such step", step_id=step_id)
            raise StoreError(f"cannot start step {step_id!r}: it is {state}", step_id=step_id)

        return await self._write(work)

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
        params = {
            "p_id": step_id,
            "p_state": state.value,
            "p_response": response,
            "p_error": error,
            "p_now": time.time(),
        }

        async def work(connection: AsyncConnection) -> Step | None:
            row = (await connection.execute(_FINISH_STEP, params)).first()
            return None if row is None else _step_from_row(row)

        return await self._write(work)

    async def cancel_steps(self, response_id: str) -> int:
        params = {"p_id": response_id, "p_now": time.time()}

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(_CANCEL_STEPS, params)).rowcount

        return await self._write(work)

    async def load_chain(self, response_id: str, *, scope: str | None) -> list[Step]:
        statement = _LOAD_CHAIN_TOP if scope is None else _LOAD_CHAIN_SCOPED
        params = {"p_id": response_id, "p_scope": scope}

        async def work(connection: AsyncConnection) -> list[Step]:
            return [_step_from_row(row) for row in await connection.execute(statement, params)]

        return await self._read(work)

    async def load_steps(self, response_id: str) -> list[Step]:
        async def work(connection: AsyncConnection) -> list[Step]:
            result = await connection.execute(_LOAD_STEPS, {"p_id": response_id})
            return [_step_from_row(row) for row in result]

        return await self._read(work)

    # -- events --

    async def append_events(
        self, rows: Sequence[EventRow], *, ends: Sequence[StepEnd | ResponseEnd] = ()
    ) -> list[EndResult]:
        if not rows and not ends:
            return []
        values = [
            {
                "response_id": row.response_id,
                "seq": row.seq,
                "step_id": row.step_id,
                "data": row.data,
            }
            for row in rows
        ]
        now = time.time()
        response_ids = sorted({row.response_id for row in rows})

        async def work(connection: AsyncConnection) -> list[EndResult]:
            results: list[EndResult] = []
            for end in ends:
                if isinstance(end, StepEnd):
                    if not end.state.terminal:
                        raise ValueError(f"a step end needs a terminal state, not {end.state}")
                    params = {
                        "p_id": end.step_id,
                        "p_state": end.state.value,
                        "p_response": end.response,
                        "p_error": end.error,
                        "p_now": now,
                    }
                    row = (await connection.execute(_FINISH_STEP, params)).first()
                    results.append(None if row is None else _step_from_row(row))
                else:
                    results.append(await _finish_response_in(connection, end))
            if values:
                await connection.execute(self._insert_events, values)
            if self._postgres and response_ids:
                # delivered on commit to every process that LISTENs
                await connection.execute(_NOTIFY, {"p_ids": response_ids})
            return results

        results = await self._write(work, transaction=True)
        if response_ids:
            self._notifier.notify(response_ids)
        return results

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

    async def read_events(self, response_id: str, *, after: int, limit: int) -> list[EventRow]:
        params = {"p_id": response_id, "p_after": after, "p_limit": limit}

        async def work(connection: AsyncConnection) -> list[EventRow]:
            return [
                EventRow(
                    response_id=row.response_id, seq=row.seq, data=row.data, step_id=row.step_id
                )
                for row in await connection.execute(_READ_EVENTS, params)
            ]

        return await self._read(work)

    async def step_events(self, response_id: str, step_id: str) -> list[EventRow]:
        params = {"p_id": response_id, "p_step": step_id}

        async def work(connection: AsyncConnection) -> list[EventRow]:
            return [
                EventRow(
                    response_id=row.response_id, seq=row.seq, data=row.data, step_id=row.step_id
                )
                for row in await connection.execute(_STEP_EVENTS, params)
            ]

        return await self._read(work)

    async def last_event_seq(self, response_id: str) -> int:
        async def work(connection: AsyncConnection) -> int:
            last = (await connection.execute(_LAST_EVENT_SEQ, {"p_id": response_id})).scalar()
            return -1 if last is None else int(last)

        return await self._read(work)

    # -- leases --

    async def renew_leases(
        self, owner: str, response_ids: Sequence[str], *, expires_at: float
    ) -> set[str]:
        if not response_ids:
            return set()
        params = {"p_owner": owner, "p_ids": list(response_ids), "p_expires_at": expires_at}

        async def work(connection: AsyncConnection) -> set[str]:
            return set((await connection.execute(_RENEW_LEASES, params)).scalars())

        return await self._write(work)

    async def release_lease(self, response_id: str, owner: str) -> None:
        async def work(connection: AsyncConnection) -> None:
            await connection.execute(_RELEASE_LEASE, {"p_id": response_id, "p_owner": owner})

        await self._write(work)

    async def claim_expired(
        self, owner: str, *, now: float, expires_at: float, limit: int
    ) -> list[str]:
        params = {"p_owner": owner, "p_now": now, "p_expires_at": expires_at, "p_limit": limit}

        async def work(connection: AsyncConnection) -> list[str]:
            return list((await connection.execute(_CLAIM_EXPIRED, params)).scalars())

        return await self._write(work)

    async def close(self) -> None:
        """Wait for writes still running, then close every pooled connection."""
        if self._writes:
            await asyncio.wait(self._writes)
        if self._listener is not None:
            await self._listener.aclose()
        await self._engine.dispose()

    # -- machinery --

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        try:
            async with self._autocommit.connect() as connection:
                return await work(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store read failed: {_describe(exc)}") from exc

    async def _write(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], *, transaction: bool = False
    ) -> _T:
        task = asyncio.get_running_loop().create_task(self._run_write(work, transaction))
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
            raise StoreError(f"store write failed: {_describe(exc)}") from exc

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            # Mark the outcome as seen: a caller cancelled mid-write never reads it.
            task.exception()

    # -- for the store's other modules (retention, usage) --

    async def run_read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` on an autocommit connection, as the store's own reads run."""
        return await self._read(work)

    async def run_write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` in one transaction, queued with the store's own writes (on
        SQLite, behind this process's writers; never abandoned once started)."""
        return await self._write(work, transaction=True)

    # -- the console's reads (store/listing.py) --

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        async def work(connection: AsyncConnection) -> ResponsePage:
            return await listing.list_summaries(connection, query)

        return await self._read(work)

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        async def work(connection: AsyncConnection) -> ResponseTree | None:
            return await listing.load_tree(connection, response_id)

        return await self._read(work)

    # -- conversations (the statements are in ``store/conversations.py``) --

    async def create_conversation(
        self, record: ConversationRecord, items: Sequence[dict[str, Any]] = ()
    ) -> list[ConversationItem]:
        async def work(connection: AsyncConnection) -> list[ConversationItem]:
            return await conversations.create_conversation(connection, record, items)

        return await self._write(work, transaction=True)

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
        async def work(connection: AsyncConnection) -> list[ConversationItem] | None:
            return await conversations.append_items(connection, conversation_id, items)

        return await self._write(work, transaction=True)

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
