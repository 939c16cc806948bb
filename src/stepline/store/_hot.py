"""The statements a running response needs on every step, on the drivers.

Creating a response, recording, starting and finishing its steps, its event
log, its end and its lease: each is a function here over a
:class:`~stepline.store._drivers.Driver` (or one of its transactions), which
:class:`~stepline.store._sql.SqlStore` calls. The SQL names the tables and
columns of :mod:`stepline.store._schema` (which the migrations create); JSON
columns hold orjson text, exactly as :class:`~stepline.store._schema.JsonText`
writes them, so rows written here and through SQLAlchemy read the same.

Invariants (the :class:`~stepline.store._base.StepStore` contract, and):

* ``record_steps`` locks the response row (``FOR UPDATE`` on PostgreSQL, the
  write lock of ``BEGIN IMMEDIATE`` on SQLite) before it reads the chain's
  tail, so concurrent calls queue instead of colliding.
* ``append_events`` with an ``owner`` reads the leases it needs in the
  transaction that writes (``FOR KEY SHARE``, in id order, as the renewal
  locks them, so the two never deadlock): a claim by another process (its
  ``FOR UPDATE``) waits for the write, or skips the response, and reads every
  row of it.
* On PostgreSQL the writes of a running response are one statement each (one
  round trip, no ``BEGIN``/``COMMIT`` of their own): a response with its first
  steps, events alone, and events with the ends of steps and responses (a
  conversation's items, rare, take a transaction).
* ``claim_expired`` is one ``UPDATE`` over a ``FOR UPDATE SKIP LOCKED``
  subquery, so two claimers never take the same response.
* A conversation's items are appended (by a client, or by a response's end
  in the transaction that stores it) at positions reserved by one ``UPDATE
  ... RETURNING`` of the conversation's ``next_position``: that holds the
  conversation's row (PostgreSQL) or the write lock (SQLite) until commit,
  so two appends take one contiguous run each and never interleave. An id
  the conversation already holds is replaced (``unique_item_ids``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from stepline._steps import NewStep, Step, StepKind, StepState
from stepline.errors import StoreError
from stepline.store._base import (
    TERMINAL_STATUSES,
    Appended,
    ConversationItem,
    ConversationRecord,
    EndResult,
    EventRow,
    ResponseEnd,
    ResponseRecord,
    StepEnd,
    new_steps,
    unique_item_ids,
)
from stepline.store._drivers import Driver, Rows, Tx, dump_json, load_json
from stepline.store._notify import CHANNEL

__all__ = [
    "append_conversation_items",
    "append_events",
    "claim_expired",
    "create_conversation",
    "create_response",
    "finish_response",
    "finish_step",
    "get_response",
    "last_event_seq",
    "load_chain",
    "load_steps",
    "read_events",
    "record_steps",
    "release_lease",
    "renew_leases",
    "set_status",
    "start_step",
    "step_events",
    "stored_ids",
]

_RESPONSE_COLUMNS = (
    "id, created_at, status, model, body, previous_response_id, store, background,"
    " owner, lease_expires_at, result, completed_at, key_id"
)
_STEP_COLUMNS = (
    "id, response_id, scope, previous_step_id, sequence, kind, state, request, response,"
    " error, call_id, attempt, created_at, started_at, finished_at"
)
#: NULLs for the step columns after the id, typed, for the rows of _APPEND_ENDS that are
#: not steps
_NO_STEP = (
    "NULL::text, NULL::text, NULL::text, NULL::int, NULL::text, NULL::text, NULL::text,"
    " NULL::text, NULL::text, NULL::text, NULL::int, NULL::float8, NULL::float8, NULL::float8"
)
_NOT_TERMINAL = "status NOT IN ({})".format(", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES)))
_LIVE_STEP = f"state IN ('{StepState.PENDING.value}', '{StepState.PROCESSING.value}')"


def _record(row: Sequence[Any]) -> ResponseRecord:
    return ResponseRecord(
        id=row[0],
        created_at=row[1],
        status=row[2],
        model=row[3],
        body=load_json(row[4]),
        previous_response_id=row[5],
        store=bool(row[6]),
        background=bool(row[7]),
        owner=row[8],
        lease_expires_at=row[9],
        result=load_json(row[10]),
        completed_at=row[11],
        key_id=row[12],
    )


def _step(row: Sequence[Any]) -> Step:
    return Step(
        id=row[0],
        response_id=row[1],
        scope=row[2],
        previous_step_id=row[3],
        sequence=row[4],
        kind=StepKind(row[5]),
        state=StepState(row[6]),
        request=load_json(row[7]),
        response=load_json(row[8]),
        error=load_json(row[9]),
        call_id=row[10],
        attempt=row[11],
        created_at=row[12],
        started_at=row[13],
        finished_at=row[14],
    )


def _event(row: Sequence[Any]) -> EventRow:
    return EventRow(response_id=row[0], seq=row[1], step_id=row[2], data=bytes(row[3]))


def _for(driver: Tx, lock: str) -> str:
    """A row lock clause (PostgreSQL; SQLite's transactions hold the write lock)."""
    return f" FOR {lock}" if driver.postgres else ""


# -- responses ------------------------------------------------------------------


async def create_response(
    driver: Driver,
    record: ResponseRecord,
    *,
    steps: Sequence[NewStep] = (),
    events: Sequence[EventRow] = (),
) -> list[Step]:
    """The response, its first ``steps`` recorded started and its first ``events``, in
    one transaction (one statement, one round trip, on PostgreSQL)."""
    sql, args = _insert_response(record)
    if not steps and not events:
        await driver.write(sql, *args)
        return []
    recorded = new_steps(
        record.id, scope=None, previous_step_id=None, last_sequence=0, steps=steps, start=True
    )
    if driver.postgres:
        step_columns = _step_columns(recorded) if recorded else [[] for _ in _STEP_ARRAYS]
        await driver.write(_CREATE, *args, *step_columns, *_row_columns(events))
        return recorded
    async with driver.transaction() as tx:
        await tx.fetch(sql, *args)
        if recorded:
            await _insert_steps(tx, recorded)
        if events:
            await _insert_events(tx, events)
    return recorded


def _insert_response(record: ResponseRecord) -> tuple[str, tuple[Any, ...]]:
    return (
        f"INSERT INTO responses ({_RESPONSE_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        (
            record.id,
            record.created_at,
            record.status,
            record.model,
            dump_json(record.body),
            record.previous_response_id,
            record.store,
            record.background,
            record.owner,
            record.lease_expires_at,
            dump_json(record.result),
            record.completed_at,
            record.key_id,
        ),
    )


async def get_response(driver: Driver, response_id: str) -> ResponseRecord | None:
    rows = await driver.fetch(
        f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = $1", response_id
    )
    return _record(rows[0]) if rows else None


async def stored_ids(driver: Driver, response_ids: Sequence[str]) -> set[str]:
    if not response_ids:
        return set()
    rows = await driver.fetch(
        f"SELECT id FROM responses WHERE id {driver.in_list('$1')} AND store",
        driver.list_arg(response_ids),
    )
    return {row[0] for row in rows}


async def set_status(driver: Driver, response_id: str, status: str) -> None:
    await driver.write(
        f"UPDATE responses SET status = $2 WHERE id = $1 AND {_NOT_TERMINAL}", response_id, status
    )


async def finish_response(tx: Tx, end: ResponseEnd) -> bool:
    """Finish a live response, keep its items and extend its conversation (in ``tx``)."""
    if end.status not in TERMINAL_STATUSES:
        raise ValueError(f"{end.status!r} is not a terminal status")
    finished = await tx.fetch(
        "UPDATE responses SET status = $2, result = $3, completed_at = $4, owner = NULL,"
        f" lease_expires_at = NULL WHERE id = $1 AND {_NOT_TERMINAL} RETURNING id",
        end.response_id,
        end.status,
        dump_json(end.result),
        end.completed_at,
    )
    if not finished:
        return False
    if end.status == "cancelled":
        # a cancellation stops every step with it: a crash between the two never leaves
        # a live response with cancelled steps (a process resuming it would fail it)
        await tx.fetch(
            f"UPDATE steps SET state = '{StepState.CANCELLED.value}', finished_at = $2"
            f" WHERE response_id = $1 AND {_LIVE_STEP}",
            end.response_id,
            time.time(),
        )
    kept = [
        (end.response_id, position, item["id"], dump_json(item))
        for position, item in enumerate(end.items)
        if item.get("id")
    ]
    if kept:
        await tx.executemany(
            "INSERT INTO items (response_id, position, id, data) VALUES ($1, $2, $3, $4)", kept
        )
    if end.conversation_id is not None:
        await append_conversation_items(tx, end.conversation_id, end.conversation_items)
    return True


async def create_conversation(
    driver: Driver, record: ConversationRecord, items: Sequence[dict[str, Any]]
) -> list[ConversationItem]:
    """Store a new conversation with its first items, in one transaction."""
    async with driver.transaction() as tx:
        await tx.fetch(
            "INSERT INTO conversations (id, created_at, metadata, key_id, next_position)"
            " VALUES ($1, $2, $3, $4, $5)",
            record.id,
            record.created_at,
            dump_json(record.metadata),
            record.key_id,
            record.next_position,
        )
        return await append_conversation_items(tx, record.id, items) or []


async def append_conversation_items(
    tx: Tx, conversation_id: str, items: Sequence[dict[str, Any]]
) -> list[ConversationItem] | None:
    """Append ``items`` contiguously at the conversation's end (in ``tx``); None if
    there is no such conversation."""
    reserved = await tx.fetch(
        "UPDATE conversations SET next_position = next_position + $2 WHERE id = $1"
        " RETURNING next_position",
        conversation_id,
        len(items),
    )
    if not reserved:
        return None
    if not items:
        return []
    wanted = [str(item["id"]) for item in items if item.get("id")]
    taken: set[str] = set()
    if wanted:
        rows = await tx.fetch(
            "SELECT id FROM conversation_items WHERE conversation_id = $1"
            f" AND id {tx.in_list('$2')}",
            conversation_id,
            tx.list_arg(wanted),
        )
        taken = {row[0] for row in rows}
    start = int(reserved[0][0]) - len(items)
    stored = [
        ConversationItem(position=start + offset, id=item["id"], data=item)
        for offset, item in enumerate(unique_item_ids(items, taken))
    ]
    await tx.executemany(
        "INSERT INTO conversation_items (conversation_id, position, id, data)"
        " VALUES ($1, $2, $3, $4)",
        [(conversation_id, item.position, item.id, dump_json(item.data)) for item in stored],
    )
    return stored


# -- steps ----------------------------------------------------------------------


async def record_steps(
    driver: Driver,
    response_id: str,
    *,
    scope: str | None,
    steps: Sequence[NewStep],
    start: bool,
) -> list[Step]:
    last_of_scope = "scope IS NULL" if scope is None else "scope = $2"
    args: tuple[Any, ...] = (response_id,) if scope is None else (response_id, scope)
    async with driver.transaction() as tx:
        locked = await tx.fetch(
            "SELECT id FROM responses WHERE id = $1" + _for(driver, "UPDATE"), response_id
        )
        if not locked:
            raise StoreError(f"cannot record steps: no response {response_id!r}")
        [(last_sequence, previous_step_id)] = await tx.fetch(
            "SELECT (SELECT max(sequence) FROM steps WHERE response_id = $1),"
            f" (SELECT id FROM steps WHERE response_id = $1 AND {last_of_scope}"
            " ORDER BY sequence DESC LIMIT 1)",
            *args,
        )
        recorded = new_steps(
            response_id,
            scope=scope,
            previous_step_id=previous_step_id,
            last_sequence=last_sequence or 0,
            steps=steps,
            start=start,
        )
        await _insert_steps(tx, recorded)
    return recorded


def _step_values(step: Step) -> tuple[Any, ...]:
    """A step as the values of ``_STEP_COLUMNS``."""
    return (
        step.id,
        step.response_id,
        step.scope,
        step.previous_step_id,
        step.sequence,
        step.kind.value,
        step.state.value,
        dump_json(step.request),
        dump_json(step.response),
        dump_json(step.error),
        step.call_id,
        step.attempt,
        step.created_at,
        step.started_at,
        step.finished_at,
    )


async def _insert_steps(tx: Tx, recorded: Sequence[Step]) -> None:
    await tx.executemany(
        f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES"
        " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        [_step_values(step) for step in recorded],
    )


def _step_columns(recorded: Sequence[Step]) -> list[list[Any]]:
    """Steps as one array per column of ``_STEP_COLUMNS`` (for ``unnest``)."""
    return [list(column) for column in zip(*(_step_values(step) for step in recorded), strict=True)]


#: the types of ``_STEP_COLUMNS`` as PostgreSQL arrays, for ``unnest``
_STEP_ARRAYS = (
    "text[]", "text[]", "text[]", "text[]", "int[]", "text[]", "text[]", "text[]", "text[]",
    "text[]", "text[]", "int[]", "float8[]", "float8[]", "float8[]",
)  # fmt: skip

#: a response, its first steps and its first events on PostgreSQL in one statement:
#: $1-$13 the response (as ``_insert_response``), $14-$28 the steps' columns, $29-$32
#: the events' (as ``_row_columns``); nobody follows a response before it exists, so
#: its first events notify no one
_CREATE = f"""
WITH response AS (
    INSERT INTO responses ({_RESPONSE_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
), first_steps AS (
    INSERT INTO steps ({_STEP_COLUMNS})
    SELECT * FROM unnest({", ".join(f"${14 + n}::{kind}" for n, kind in enumerate(_STEP_ARRAYS))})
)
INSERT INTO events (response_id, seq, step_id, data)
SELECT * FROM unnest($29::text[], $30::int[], $31::text[], $32::bytea[])
"""


async def start_step(driver: Driver, step_id: str) -> Step:
    rows = await driver.write(
        f"UPDATE steps SET state = '{StepState.PROCESSING.value}', attempt = attempt + 1,"
        f" started_at = $2 WHERE id = $1 AND {_LIVE_STEP} RETURNING {_STEP_COLUMNS}",
        step_id,
        time.time(),
    )
    if rows:
        return _step(rows[0])
    state = await driver.fetch("SELECT state FROM steps WHERE id = $1", step_id)
    if not state:
        raise StoreError(f"cannot start step {step_id!r}: no such step", step_id=step_id)
    raise StoreError(f"cannot start step {step_id!r}: it is {state[0][0]}", step_id=step_id)


_FINISH_STEP = (
    "UPDATE steps SET state = $2, response = $3, error = $4, finished_at = $5"
    f" WHERE id = $1 AND state = '{StepState.PROCESSING.value}' RETURNING {_STEP_COLUMNS}"
)


async def finish_step(
    tx: Tx,
    step_id: str,
    *,
    state: StepState,
    response: dict[str, Any] | None,
    error: dict[str, Any] | None,
    now: float,
) -> Step | None:
    """Finish a processing step (in ``tx``, or alone on a driver's ``write``)."""
    if not state.terminal:
        raise ValueError(f"a step end needs a terminal state, not {state.value!r}")
    rows = await tx.fetch(
        _FINISH_STEP, step_id, state.value, dump_json(response), dump_json(error), now
    )
    return _step(rows[0]) if rows else None


async def load_chain(driver: Driver, response_id: str, *, scope: str | None) -> list[Step]:
    if scope is None:
        rows = await driver.fetch(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE response_id = $1 AND scope IS NULL"
            " ORDER BY sequence",
            response_id,
        )
    else:
        rows = await driver.fetch(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE response_id = $1 AND scope = $2"
            " ORDER BY sequence",
            response_id,
            scope,
        )
    return [_step(row) for row in rows]


async def load_steps(driver: Driver, response_id: str) -> list[Step]:
    rows = await driver.fetch(
        f"SELECT {_STEP_COLUMNS} FROM steps WHERE response_id = $1 ORDER BY sequence", response_id
    )
    return [_step(row) for row in rows]


# -- events ---------------------------------------------------------------------


async def append_events(
    driver: Driver,
    rows: Sequence[EventRow],
    *,
    ends: Sequence[StepEnd | ResponseEnd],
    owner: str | None,
) -> Appended:
    """Rows and ends in one transaction; with ``owner``, only its responses' (see
    :class:`~stepline.store._base.Appended`)."""
    now = time.time()
    with_rows = sorted({row.response_id for row in rows})
    touched = sorted({*with_rows, *(end.response_id for end in ends)})
    if driver.postgres and rows and not ends:
        return await _append_rows_postgres(driver, rows, with_rows, owner)
    if driver.postgres and not any(
        isinstance(end, ResponseEnd)
        and (end.conversation_id is not None or end.status == "cancelled")
        for end in ends
    ):
        return await _append_ends_postgres(driver, rows, ends, touched, owner, now)
    async with driver.transaction() as tx:
        fenced: frozenset[str] = frozenset()
        if owner is not None:
            held = await tx.fetch(
                f"SELECT id FROM responses WHERE id {driver.in_list('$1')} AND owner = $2"
                " ORDER BY id" + _for(driver, "KEY SHARE"),
                driver.list_arg(touched),
                owner,
            )
            fenced = frozenset(touched) - {row[0] for row in held}
        results: list[EndResult] = []
        for end in ends:
            if end.response_id in fenced:
                results.append(None if isinstance(end, StepEnd) else False)
            elif isinstance(end, StepEnd):
                results.append(
                    await finish_step(
                        tx,
                        end.step_id,
                        state=end.state,
                        response=end.response,
                        error=end.error,
                        now=now if end.finished_at is None else end.finished_at,
                    )
                )
            else:
                results.append(await finish_response(tx, end))
        kept = [row for row in rows if row.response_id not in fenced]
        if kept and driver.postgres:
            # fenced above already: the statement writes and notifies without a fence
            written = sorted({row.response_id for row in kept})
            await tx.fetch(_APPEND_ROWS, *_row_columns(kept), written, None)
        elif kept:
            await _insert_events(tx, kept)
    return Appended(ends=results, fenced=fenced)


async def _insert_events(tx: Tx, rows: Sequence[EventRow]) -> None:
    await tx.executemany(
        "INSERT INTO events (response_id, seq, step_id, data) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (response_id, seq) DO NOTHING",
        [(row.response_id, row.seq, row.step_id, row.data) for row in rows],
    )


def _row_columns(rows: Sequence[EventRow]) -> tuple[list[Any], ...]:
    """Event rows as the four arrays ``_APPEND_ROWS`` takes first."""
    return (
        [row.response_id for row in rows],
        [row.seq for row in rows],
        [row.step_id for row in rows],
        [row.data for row in rows],
    )


#: response ids per notification in _APPEND_ROWS: each id is at most 40 bytes, and a
#: payload must stay under PostgreSQL's 8000; a few notifications per transaction, not
#: one per response (each wakes every listening process)
_NOTIFY_IDS = 190

#: the parts of the statements below that both write: the fence's leases (``FOR KEY
#: SHARE``: a claim's ``FOR UPDATE`` waits for the write) over the responses $5 when
#: there is an owner $6, the responses still held (``kept``), and the event rows $1-$4
#: of those
_FENCE = """WITH held AS (
    SELECT id FROM responses
    WHERE $6::text IS NOT NULL AND id = ANY($5::text[]) AND owner = $6
    ORDER BY id FOR KEY SHARE
), kept AS (
    SELECT id FROM unnest($5::text[]) AS id
    WHERE $6::text IS NULL OR id IN (SELECT id FROM held)
)"""
_WRITE_ROWS = """, written AS (
    INSERT INTO events (response_id, seq, step_id, data)
    SELECT e.response_id, e.seq, e.step_id, e.data
    FROM unnest($1::text[], $2::int[], $3::text[], $4::bytea[])
        AS e(response_id, seq, step_id, data)
    WHERE e.response_id IN (SELECT id FROM kept)
    ON CONFLICT (response_id, seq) DO NOTHING
)"""


def _notes(kept: str) -> str:
    """The grouped ids of the responses ``kept`` names, one notification per group."""
    return (
        f"SELECT string_agg(id, ',' ORDER BY id) AS ids FROM (SELECT id, (row_number() OVER"
        f" (ORDER BY id) - 1) / {_NOTIFY_IDS} AS part FROM {kept}) AS k GROUP BY part"
    )


#: Events on PostgreSQL in one statement (events alone, most of a stream's writes, take
#: one round trip and a transaction of their own): the fence's leases (``FOR KEY
#: SHARE``: a claim's ``FOR UPDATE`` waits for the write), the rows of the responses
#: still held, and a notification per group of those responses. $1-$4 are the rows,
#: $5 the responses, $6 the owner (NULL: no fence).
_APPEND_ROWS = f"""
{_FENCE}{_WRITE_ROWS}
SELECT ids, pg_notify('{CHANNEL}', ids) FROM ({_notes("kept")}) AS notes
"""


async def _append_rows_postgres(
    driver: Driver, rows: Sequence[EventRow], with_rows: list[str], owner: str | None
) -> Appended:
    notes = await driver.write(_APPEND_ROWS, *_row_columns(rows), with_rows, owner)
    held = {response_id for note in notes for response_id in note[0].split(",")}
    return Appended(ends=[], fenced=frozenset(with_rows) - held)


#: Rows and ends on PostgreSQL in one statement (a step's or a response's end, with the
#: events that announce it, costs one round trip): the fence as in ``_APPEND_ROWS``
#: ($5 the responses touched, $6 the owner), the step ends ($7-$11) of the responses
#: still held, their response ends ($12-$15) and those responses' items ($16-$19), the
#: event rows ($1-$4) and their notifications. Every data-modifying part runs whether
#: or not it is read; the result is one row per held response ("k"), finished step
#: ("s", its columns) and finished response ("r"), and the notifications ("n").
_APPEND_ENDS = f"""
{_FENCE}, step_ends AS (
    UPDATE steps AS s
    SET state = e.state, response = e.response, error = e.error, finished_at = e.finished_at
    FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::float8[])
        AS e(id, state, response, error, finished_at)
    WHERE s.id = e.id AND s.state = '{StepState.PROCESSING.value}'
        AND s.response_id IN (SELECT id FROM kept)
    RETURNING {", ".join(f"s.{column.strip()}" for column in _STEP_COLUMNS.split(","))}
), response_ends AS (
    UPDATE responses AS r
    SET status = e.status, result = e.result, completed_at = e.completed_at, owner = NULL,
        lease_expires_at = NULL
    FROM unnest($12::text[], $13::text[], $14::text[], $15::float8[])
        AS e(id, status, result, completed_at)
    WHERE r.id = e.id AND r.{_NOT_TERMINAL} AND r.id IN (SELECT id FROM kept)
    RETURNING r.id
), kept_items AS (
    INSERT INTO items (response_id, position, id, data)
    SELECT i.response_id, i.position, i.id, i.data
    FROM unnest($16::text[], $17::int[], $18::text[], $19::text[])
        AS i(response_id, position, id, data)
    WHERE i.response_id IN (SELECT id FROM response_ends)
){_WRITE_ROWS}
SELECT 'k', id, {_NO_STEP} FROM kept
UNION ALL SELECT 's', * FROM step_ends
UNION ALL SELECT 'r', id, {_NO_STEP} FROM response_ends
UNION ALL SELECT 'n', pg_notify('{CHANNEL}', ids)::text, {_NO_STEP}
FROM ({_notes("(SELECT id FROM kept WHERE id = ANY($1::text[])) AS with_rows")}) AS notes
"""


async def _append_ends_postgres(
    driver: Driver,
    rows: Sequence[EventRow],
    ends: Sequence[StepEnd | ResponseEnd],
    touched: list[str],
    owner: str | None,
    now: float,
) -> Appended:
    step_ends = [end for end in ends if isinstance(end, StepEnd)]
    response_ends = [end for end in ends if isinstance(end, ResponseEnd)]
    for response_end in response_ends:
        if response_end.status not in TERMINAL_STATUSES:
            raise ValueError(f"{response_end.status!r} is not a terminal status")
    for step_end in step_ends:
        if not step_end.state.terminal:
            raise ValueError(f"a step end needs a terminal state, not {step_end.state.value!r}")
    items = [
        (end.response_id, position, item["id"], dump_json(item))
        for end in response_ends
        for position, item in enumerate(end.items)
        if item.get("id")
    ]
    found = await driver.write(
        _APPEND_ENDS,
        *_row_columns(rows),
        touched,
        owner,
        [end.step_id for end in step_ends],
        [end.state.value for end in step_ends],
        [dump_json(end.response) for end in step_ends],
        [dump_json(end.error) for end in step_ends],
        [now if end.finished_at is None else end.finished_at for end in step_ends],
        [end.response_id for end in response_ends],
        [end.status for end in response_ends],
        [dump_json(end.result) for end in response_ends],
        [end.completed_at for end in response_ends],
        *([list(column) for column in zip(*items, strict=True)] if items else [[], [], [], []]),
    )
    kept = {row[1] for row in found if row[0] == "k"}
    finished_steps = {row[1]: _step(tuple(row)[1:]) for row in found if row[0] == "s"}
    finished = {row[1] for row in found if row[0] == "r"}
    results: list[EndResult] = [
        finished_steps.get(end.step_id) if isinstance(end, StepEnd) else end.response_id in finished
        for end in ends
    ]
    return Appended(ends=results, fenced=frozenset(touched) - kept)


_EVENT_COLUMNS = "response_id, seq, step_id, data"


async def read_events(
    driver: Driver, response_id: str, *, after: int, limit: int
) -> list[EventRow]:
    rows: Rows = await driver.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE response_id = $1 AND seq > $2"
        " ORDER BY seq LIMIT $3",
        response_id,
        after,
        limit,
    )
    return [_event(row) for row in rows]


async def step_events(driver: Driver, response_id: str, step_id: str) -> list[EventRow]:
    rows = await driver.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE response_id = $1 AND step_id = $2 ORDER BY seq",
        response_id,
        step_id,
    )
    return [_event(row) for row in rows]


async def last_event_seq(driver: Driver, response_id: str) -> int:
    [(last,)] = await driver.fetch(
        "SELECT max(seq) FROM events WHERE response_id = $1", response_id
    )
    return -1 if last is None else int(last)


# -- leases ---------------------------------------------------------------------


async def renew_leases(
    driver: Driver, owner: str, response_ids: Sequence[str], *, expires_at: float
) -> set[str]:
    rows = await driver.write(
        "UPDATE responses SET lease_expires_at = $3 WHERE id IN (SELECT id FROM responses"
        f" WHERE owner = $1 AND id {driver.in_list('$2')} AND {_NOT_TERMINAL}"
        " ORDER BY id" + _for(driver, "UPDATE") + ") RETURNING id",
        owner,
        driver.list_arg(response_ids),
        expires_at,
    )
    return {row[0] for row in rows}


async def release_lease(driver: Driver, response_id: str, owner: str) -> None:
    await driver.write(
        "UPDATE responses SET owner = NULL, lease_expires_at = NULL WHERE id = $1 AND owner = $2",
        response_id,
        owner,
    )


async def claim_expired(
    driver: Driver, owner: str, *, now: float, expires_at: float, limit: int
) -> list[str]:
    rows = await driver.write(
        "UPDATE responses SET owner = $1, lease_expires_at = $3 WHERE id IN (SELECT id FROM"
        f" responses WHERE {_NOT_TERMINAL} AND (lease_expires_at IS NULL OR lease_expires_at < $2)"
        " ORDER BY created_at, id LIMIT $4" + _for(driver, "UPDATE SKIP LOCKED") + ") RETURNING id",
        owner,
        now,
        expires_at,
        limit,
    )
    return [row[0] for row in rows]
