"""Retention: delete whole responses once they are past their age, in bounded batches.

A response goes with everything stored under its id — its steps, its event
log, its items (for ``item_reference``) — on SQLite and PostgreSQL. Which
keys keep their responses how long is the caller's :class:`RetentionPolicy`;
this module knows only key ids and ages (seconds since ``created_at``).

Invariants:

* Only a terminal response is deleted (completed, failed, cancelled,
  incomplete); a queued or running one never is, whatever its age.
* A response is kept while any response continues it
  (``previous_response_id``): the conversation a kept response continues
  stays whole, so continuing it never finds a hole. A sweep deletes only
  responses that nothing continues; once those are gone, the ones they
  continued qualify in a later batch. A conversation past its age is deleted
  from its newest response back; one still in use is kept whole.
* A batch holds at most ``limit`` responses and is one transaction, queued
  with the store's own writes, so a sweep never holds the database long.
* Deleting is idempotent: sweeps in several processes at once delete each
  response once; on PostgreSQL they take disjoint batches (``SKIP LOCKED``).
* Conversations (``conversations``, ``conversation_items``) are not keyed by
  response: an item copied into a conversation is the conversation's and
  stays.
* ``now`` is fixed for a whole sweep, so one instant decides what it deletes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline.store._base import TERMINAL_STATUSES
from stepline.store._retention_values import DEFAULT_BATCH_SIZE, PurgeCounts, RetentionPolicy
from stepline.store._schema import events, items, responses, steps
from stepline.store._sql import SqlStore

__all__ = [
    "expired_counts",
    "purge",
    "purge_batch",
]

_TERMINAL = sorted(TERMINAL_STATUSES)
#: every table whose rows belong to one response, by its ``response_id``
_KEYED_BY_RESPONSE = (events, items, steps)


def _rule_clauses(
    policy: RetentionPolicy, now: float, table: sa.FromClause
) -> list[sa.ColumnElement[bool]]:
    """One clause per distinct age: the responses of ``table`` past it."""
    column = table.c
    by_age: dict[float, list[str]] = {}
    for key_id, age in policy.keys.items():
        if age is not None:
            by_age.setdefault(age, []).append(key_id)
    clauses = [
        sa.and_(column.key_id.in_(sorted(key_ids)), column.created_at < now - age)
        for age, key_ids in sorted(by_age.items())
    ]
    if policy.default is not None:
        others: sa.ColumnElement[bool] = sa.true()
        if policy.keys:
            others = sa.or_(column.key_id.is_(None), column.key_id.not_in(sorted(policy.keys)))
        clauses.append(sa.and_(others, column.created_at < now - policy.default))
    return clauses


def _expired(policy: RetentionPolicy, now: float, table: sa.FromClause) -> sa.ColumnElement[bool]:
    clauses = _rule_clauses(policy, now, table)
    if not clauses:
        return sa.false()
    return sa.and_(table.c.status.in_(_TERMINAL), sa.or_(*clauses))


def _leaves(clause: sa.ColumnElement[bool], limit: int) -> sa.Select[Any]:
    """Terminal responses matching ``clause`` that no response continues, oldest first."""
    child = responses.alias("child")
    # ``status || ''`` keeps the planner off the status index: SQLite would take it and
    # sort every finished response; by ``created_at`` a batch reads the oldest and stops
    status = responses.c.status.concat("")
    return (
        sa.select(responses.c.id)
        .where(
            status.in_(_TERMINAL),
            clause,
            ~sa.exists().where(child.c.previous_response_id == responses.c.id),
        )
        .order_by(responses.c.created_at, responses.c.id)
        .limit(limit)
        # PostgreSQL: concurrent sweeps take disjoint batches; SQLite renders nothing
        .with_for_update(skip_locked=True, of=responses)
    )


async def _delete(connection: AsyncConnection, ids: Sequence[str]) -> PurgeCounts:
    counts: dict[str, int] = {}
    for table in _KEYED_BY_RESPONSE:
        deleted = await connection.execute(sa.delete(table).where(table.c.response_id.in_(ids)))
        counts[table.name] = deleted.rowcount
    gone = await connection.execute(sa.delete(responses).where(responses.c.id.in_(ids)))
    return PurgeCounts(
        responses=gone.rowcount,
        steps=counts[steps.name],
        events=counts[events.name],
        items=counts[items.name],
    )


async def purge_batch(
    store: SqlStore,
    policy: RetentionPolicy,
    *,
    now: float,
    limit: int = DEFAULT_BATCH_SIZE,
) -> PurgeCounts:
    """Delete the oldest responses past their age that nothing continues, with their
    rows: at most ``limit`` per age rule, each rule one transaction."""
    total = PurgeCounts()
    for clause in _rule_clauses(policy, now, responses):
        total += await _purge_one(store, clause, limit)
    return total


async def _purge_one(store: SqlStore, clause: sa.ColumnElement[bool], limit: int) -> PurgeCounts:
    async def work(connection: AsyncConnection) -> PurgeCounts:
        ids = list((await connection.execute(_leaves(clause, limit))).scalars())
        return await _delete(connection, ids) if ids else PurgeCounts()

    return await store.run_write(work)


async def purge(
    store: SqlStore,
    policy: RetentionPolicy,
    *,
    now: float,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PurgeCounts:
    """Delete every response past its age that no kept response continues, batch
    after batch, until none is left; return what was deleted."""
    total = PurgeCounts()
    for clause in _rule_clauses(policy, now, responses):
        while True:
            counts = await _purge_one(store, clause, batch_size)
            total += counts
            if counts.responses == 0:
                break
    return total


async def expired_counts(store: SqlStore, policy: RetentionPolicy, *, now: float) -> PurgeCounts:
    """What :func:`purge` would delete at ``now``, deleting nothing; ``kept`` counts the
    responses past their age that a kept response continues."""
    parent, child = responses.alias("parent"), responses.alias("child")
    # past their age, yet continued by a response that is kept, directly or through others
    seed = (
        sa.select(parent.c.id)
        .join(child, child.c.previous_response_id == parent.c.id)
        .where(_expired(policy, now, parent), ~_expired(policy, now, child))
    )
    blocked = seed.cte("blocked", recursive=True)
    upper, lower = responses.alias("upper"), responses.alias("lower")
    blocked = blocked.union(
        sa.select(upper.c.id)
        .join(lower, lower.c.previous_response_id == upper.c.id)
        .join(blocked, blocked.c.id == lower.c.id)
        .where(_expired(policy, now, upper))
    )
    doomed = sa.select(responses.c.id).where(
        _expired(policy, now, responses), responses.c.id.not_in(sa.select(blocked.c.id))
    )

    def count_of(table: sa.Table) -> sa.ScalarSelect[Any]:
        return (
            sa.select(sa.func.count())
            .select_from(table)
            .where(table.c.response_id.in_(doomed))
            .scalar_subquery()
        )

    statement = sa.select(
        sa.select(sa.func.count()).select_from(doomed.subquery()).scalar_subquery(),
        count_of(steps),
        count_of(events),
        count_of(items),
        sa.select(sa.func.count()).select_from(blocked).scalar_subquery(),
    )

    async def work(connection: AsyncConnection) -> PurgeCounts:
        row = (await connection.execute(statement)).one()
        return PurgeCounts(
            responses=int(row[0]),
            steps=int(row[1]),
            events=int(row[2]),
            items=int(row[3]),
            kept=int(row[4]),
        )

    return await store.run_read(work)
