"""Usage: requests, errors, tokens and latency per UTC day, key and model, from what is stored.

One SQL statement aggregates it, on SQLite and PostgreSQL: the responses
created in a window, each with the usage of its completed model calls
(sub-agents included, as a response's own ``usage`` counts them), grouped by
any of day, key and model. Only one row per group leaves the database.

Invariants:

* A response counts once, in the group of its ``created_at`` (as a UTC day),
  its ``key_id`` and the model it asked for.
* ``requests`` counts every response created in the window, running ones
  included; ``completed``, ``failed``, ``incomplete`` and ``cancelled`` count
  the responses that ended so (the last three are the errors).
* Tokens are what the response object's ``usage`` sums: those of its
  completed model calls (and compactions), never a tool call's.
* Latency is over terminal responses, from ``created_at`` to
  ``completed_at`` or, for one that did not complete, to its last step's
  end. Quantiles are nearest-rank: the smallest duration that at least that
  share of durations do not exceed, so each is a duration that happened.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline._steps import StepKind
from stepline.store._base import TERMINAL_STATUSES
from stepline.store._schema import responses, steps
from stepline.store._sql import SqlStore
from stepline.store._usage_values import Group, UsageQuery, UsageRow

__all__ = ["read_usage"]

_DAY_SECONDS = 86400
_TOKENS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
_ERROR_STATUSES = ("failed", "incomplete", "cancelled")


def _day(created_at: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[int]:
    """Days since the epoch (UTC) of a POSIX time; times are never negative here."""
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(created_at / _DAY_SECONDS), sa.BigInteger)
    return sa.cast(created_at / _DAY_SECONDS, sa.Integer)  # SQLite's cast truncates


def _usage_of_model_calls(window: sa.CTE, dialect: str) -> sa.Subquery:
    """Each step of the window's responses (found by the steps' response index) with
    its end and, for a completed model call, its ``usage`` object (parsed once)."""
    # what ``protocol.assemble.sum_usage`` counts: every completed step but a tool call's
    is_call = sa.and_(steps.c.kind != StepKind.TOOL_CALL.value, steps.c.response.is_not(None))
    usage: sa.ColumnElement[Any]
    if dialect == "postgresql":
        # loaded here: a SQLite server never needs the PostgreSQL dialect (~2 MB)
        from sqlalchemy.dialects.postgresql import JSONB

        usage = sa.case((is_call, sa.cast(steps.c.response, JSONB)["usage"]))
    else:
        usage = sa.case((is_call, sa.func.json_extract(steps.c.response, "$.usage")))
    return (
        sa.select(steps.c.response_id, steps.c.finished_at, usage.label("usage"))
        .where(steps.c.response_id.in_(sa.select(window.c.id)))
        .subquery("step_usage")
    )


def _token(usage: sa.ColumnElement[Any], name: str, dialect: str) -> sa.ColumnElement[int]:
    value: sa.ColumnElement[Any]
    if dialect == "postgresql":
        value = sa.cast(usage[name].astext, sa.BigInteger)
    else:
        value = sa.func.json_extract(usage, f"$.{name}")
    return sa.func.coalesce(value, 0)


def _statement(query: UsageQuery, dialect: str) -> sa.Select[Any]:
    day = _day(responses.c.created_at, dialect)
    conditions = [responses.c.created_at >= query.start, responses.c.created_at < query.end]
    if query.key_ids is not None:
        conditions.append(responses.c.key_id.in_(query.key_ids))
    if query.model is not None:
        conditions.append(responses.c.model == query.model)
    window = (
        sa.select(
            responses.c.id,
            responses.c.key_id,
            responses.c.model,
            responses.c.status,
            responses.c.created_at,
            responses.c.completed_at,
            day.label("day"),
        )
        .where(*conditions)
        .cte("usage_window")
    )
    step_usage = _usage_of_model_calls(window, dialect)
    per_response = (
        sa.select(
            step_usage.c.response_id,
            sa.func.max(step_usage.c.finished_at).label("last_end"),
            *(
                sa.func.sum(_token(step_usage.c.usage, name, dialect)).label(name)
                for name in _TOKENS
            ),
        )
        .group_by(step_usage.c.response_id)
        .subquery("per_response")
    )
    groups = {"day": window.c.day, "key": window.c.key_id, "model": window.c.model}
    grouped = [groups[name] for name in query.group_by]
    ended = sa.func.coalesce(window.c.completed_at, per_response.c.last_end)
    duration = sa.case(
        (window.c.status.in_(sorted(TERMINAL_STATUSES)), ended - window.c.created_at)
    ).label("duration")
    partition = grouped or None
    ranked = (
        sa.select(
            *(column.label(name) for name, column in zip(query.group_by, grouped, strict=True)),
            window.c.status,
            *(sa.func.coalesce(per_response.c[name], 0).label(name) for name in _TOKENS),
            duration,
            sa.func.row_number()
            .over(
                partition_by=partition,
                # durations first, shortest first, on both backends (they sort NULL apart)
                order_by=[sa.case((duration.is_(None), 1), else_=0), duration],
            )
            .label("rank"),
            sa.func.count(duration).over(partition_by=partition).label("timed"),
        )
        .select_from(window.outerjoin(per_response, per_response.c.response_id == window.c.id))
        .subquery("ranked")
    )
    status = ranked.c.status

    def quantile(percent: int) -> sa.ColumnElement[Any]:
        # nearest rank: rank >= percent% of the timed ones, in integers
        at_or_above = sa.and_(
            ranked.c.duration.is_not(None), ranked.c.rank * 100 >= percent * ranked.c.timed
        )
        return sa.func.min(sa.case((at_or_above, ranked.c.duration)))

    keys = [ranked.c[name] for name in query.group_by]
    return sa.select(
        *keys,
        sa.func.count().label("requests"),
        *(
            sa.func.sum(sa.case((status == name, 1), else_=0)).label(name)
            for name in ("completed", *_ERROR_STATUSES)
        ),
        *(sa.func.sum(ranked.c[name]).label(name) for name in _TOKENS),
        quantile(50).label("latency_p50"),
        quantile(95).label("latency_p95"),
    ).group_by(*keys)


def _row(values: sa.Row[Any], group_by: Sequence[Group]) -> UsageRow:
    data = values._mapping
    day = data["day"] if "day" in group_by else None
    return UsageRow(
        day=None
        if day is None
        else datetime.datetime.fromtimestamp(int(day) * _DAY_SECONDS, datetime.UTC).date(),
        key_id=data["key"] if "key" in group_by else None,
        model=data["model"] if "model" in group_by else None,
        requests=int(data["requests"]),
        completed=int(data["completed"] or 0),
        failed=int(data["failed"] or 0),
        incomplete=int(data["incomplete"] or 0),
        cancelled=int(data["cancelled"] or 0),
        input_tokens=int(data["input_tokens"] or 0),
        output_tokens=int(data["output_tokens"] or 0),
        cached_tokens=int(data["cached_tokens"] or 0),
        reasoning_tokens=int(data["reasoning_tokens"] or 0),
        latency_p50=None if data["latency_p50"] is None else float(data["latency_p50"]),
        latency_p95=None if data["latency_p95"] is None else float(data["latency_p95"]),
    )


async def read_usage(store: SqlStore, query: UsageQuery) -> list[UsageRow]:
    """The figures of every group with at least one response in the window, sorted by
    day, key and model (a response without a key sorts first)."""
    statement = _statement(query, store.engine.dialect.name)

    async def work(connection: AsyncConnection) -> list[UsageRow]:
        result = await connection.execute(statement)
        rows = [_row(values, query.group_by) for values in result]
        if not query.group_by and rows and rows[0].requests == 0:
            return []  # no grouping and no response: the one aggregate row says nothing
        return rows

    rows = await store.run_read(work)
    return sorted(rows, key=_sort_key)


def _sort_key(row: UsageRow) -> tuple[Any, ...]:
    return (
        row.day or datetime.date.min,
        (row.key_id is not None, row.key_id or ""),
        row.model or "",
    )
