"""The console's reads: responses across every key, one page at a time, and one response's tree.

The loop never calls these; they serve the operator's console
(``stepline._server.console``), and each answers in exactly one SQL query, so a
console page costs one round trip however many responses or steps it shows.

Invariants:

* A page is ordered newest first by (``created_at``, ``id``) and continues
  from a :class:`Cursor` (keyset pagination): a response created while an
  operator pages never shifts the later pages, and no page repeats a row.
* Tokens and the error come from the stored result (a terminal response's
  response object), read inside the query with the dialect's JSON functions:
  the result itself, which holds every output item, never leaves the database.
  A response still running has no tokens yet (``None``).
* :func:`load_tree` returns the response's request body with its steps in one
  query: the body rides on the row of the first step only (or on the one row
  of a response without steps), never once per step.
* The in-memory store answers the same questions from its dicts
  (:func:`~stepline.store._listing_values.summaries_in_memory`), with the
  same order, filters and cursor; the questions and answers themselves are
  in :mod:`stepline.store._listing_values`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline._steps import Step, StepKind, StepState
from stepline.store._listing_values import (
    ResponsePage,
    ResponseQuery,
    ResponseSummary,
    ResponseTree,
    last_finished,
    page_of,
)
from stepline.store._schema import responses, steps

__all__ = ["list_summaries", "load_tree"]


# -- SQL ------------------------------------------------------------------------


def _json_text(dialect: str, column: sa.ColumnElement[Any], *path: str) -> sa.ColumnElement[Any]:
    """The text (or number) at ``path`` inside a JSON text column; NULL where absent."""
    if dialect == "postgresql":
        # loaded here: a SQLite server never needs the PostgreSQL dialect (~2 MB)
        from sqlalchemy.dialects.postgresql import JSONB

        return sa.func.jsonb_extract_path_text(sa.cast(column, JSONB), *path)
    return sa.func.json_extract(column, "$." + ".".join(path))


_RESULT_FIELDS = (
    ("input_tokens", ("usage", "input_tokens"), sa.Integer),
    ("output_tokens", ("usage", "output_tokens"), sa.Integer),
    ("error_code", ("error", "code"), sa.String),
    ("error_message", ("error", "message"), sa.String),
)


def _result_columns(
    dialect: str, *, only: sa.ColumnElement[bool] | None = None
) -> list[sa.ColumnElement[Any]]:
    """The result's tokens and error; with ``only``, read on the rows it selects alone
    (a CASE is evaluated lazily, so the result is parsed there and nowhere else)."""
    columns: list[sa.ColumnElement[Any]] = []
    for label, path, kind in _RESULT_FIELDS:
        value: sa.ColumnElement[Any] = sa.cast(_json_text(dialect, responses.c.result, *path), kind)
        if only is not None:
            value = sa.case((only, value), else_=sa.null())
        columns.append(value.label(label))
    return columns


_RECORD_COLUMNS = (
    responses.c.id,
    responses.c.created_at,
    responses.c.status,
    responses.c.model,
    responses.c.key_id,
    responses.c.background,
    responses.c.store,
    responses.c.previous_response_id,
    responses.c.completed_at,
)


def _where(query: ResponseQuery) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if query.since is not None:
        clauses.append(responses.c.created_at >= query.since)
    if query.status is not None:
        clauses.append(responses.c.status == query.status)
    if query.model is not None:
        clauses.append(responses.c.model == query.model)
    if query.key_ids is not None:
        named = [key_id for key_id in query.key_ids if key_id is not None]
        either = [responses.c.key_id.in_(named)] if named else []
        if None in query.key_ids:
            either.append(responses.c.key_id.is_(None))
        clauses.append(sa.or_(*either) if either else sa.false())
    if query.before is not None:
        created, response_id = query.before.created_at, query.before.id
        clauses.append(
            sa.or_(
                responses.c.created_at < created,
                sa.and_(responses.c.created_at == created, responses.c.id < response_id),
            )
        )
    return clauses


_NEWEST_FIRST = (responses.c.created_at.desc(), responses.c.id.desc())


def _summaries_statement(dialect: str, query: ResponseQuery) -> sa.Select[Any]:
    # The page's ids first, so the JSON reads and the step aggregates below run
    # for the rows shown only, never for every row the filters match.
    page = (
        sa.select(responses.c.id)
        .where(*_where(query))
        .order_by(*_NEWEST_FIRST)
        .limit(max(query.limit, 0) + 1)
        .cte("page")
    )
    step_stats = (
        sa.select(
            steps.c.response_id,
            sa.func.count().label("step_count"),
            sa.func.max(steps.c.finished_at).label("last_step_finished_at"),
        )
        .where(steps.c.response_id.in_(sa.select(page.c.id)))
        .group_by(steps.c.response_id)
        .subquery("step_stats")
    )
    return (
        sa.select(
            *_RECORD_COLUMNS,
            *_result_columns(dialect),
            sa.func.coalesce(step_stats.c.step_count, 0).label("step_count"),
            step_stats.c.last_step_finished_at,
        )
        .select_from(page)
        .join(responses, responses.c.id == page.c.id)
        .outerjoin(step_stats, step_stats.c.response_id == page.c.id)
        .order_by(*_NEWEST_FIRST)
    )


def _summary(row: Any, *, step_count: int, last_step_finished_at: float | None) -> ResponseSummary:
    return ResponseSummary(
        id=row.id,
        created_at=row.created_at,
        status=row.status,
        model=row.model,
        key_id=row.key_id,
        background=bool(row.background),
        store=bool(row.store),
        previous_response_id=row.previous_response_id,
        completed_at=row.completed_at,
        last_step_finished_at=last_step_finished_at,
        step_count=step_count,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        error_code=row.error_code,
        error_message=row.error_message,
    )


async def list_summaries(connection: AsyncConnection, query: ResponseQuery) -> ResponsePage:
    """One page of responses across every key, newest first, in one query."""
    statement = _summaries_statement(connection.dialect.name, query)
    rows = await connection.execute(statement)
    summaries = [
        _summary(
            row,
            step_count=int(row.step_count),
            last_step_finished_at=row.last_step_finished_at,
        )
        for row in rows
    ]
    return page_of(summaries, query.limit)


_STEP_LABELS = {column.name: f"step_{column.name}" for column in steps.c}


def _tree_statement(dialect: str) -> sa.Select[Any]:
    first_row = sa.or_(steps.c.sequence.is_(None), steps.c.sequence == 1)
    return (
        sa.select(
            *_RECORD_COLUMNS,
            # sequences start at 1: the result's fields and the body come once, on the
            # first row
            *_result_columns(dialect, only=first_row),
            sa.case((first_row, responses.c.body), else_=sa.null()).label("body"),
            *(column.label(_STEP_LABELS[column.name]) for column in steps.c),
        )
        .select_from(responses.outerjoin(steps, steps.c.response_id == responses.c.id))
        .where(responses.c.id == sa.bindparam("p_id"))
        .order_by(steps.c.sequence)
    )


def _step_of(row: Any) -> Step:
    value = {name: getattr(row, label) for name, label in _STEP_LABELS.items()}
    return Step(
        id=value["id"],
        response_id=value["response_id"],
        scope=value["scope"],
        previous_step_id=value["previous_step_id"],
        sequence=value["sequence"],
        kind=StepKind(value["kind"]),
        state=StepState(value["state"]),
        request=value["request"],
        response=value["response"],
        error=value["error"],
        call_id=value["call_id"],
        attempt=value["attempt"],
        created_at=value["created_at"],
        started_at=value["started_at"],
        finished_at=value["finished_at"],
    )


async def load_tree(connection: AsyncConnection, response_id: str) -> ResponseTree | None:
    """A response with its request body and all its steps, in one query; None if absent."""
    rows = list(
        await connection.execute(_tree_statement(connection.dialect.name), {"p_id": response_id})
    )
    if not rows:
        return None
    found = [_step_of(row) for row in rows if row.step_id is not None]
    body = rows[0].body
    return ResponseTree(
        summary=_summary(
            rows[0],
            step_count=len(found),
            last_step_finished_at=last_finished(found),
        ),
        body=body if isinstance(body, dict) else {},
        steps=found,
    )
