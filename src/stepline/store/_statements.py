"""The SQL store's statements off the hot path, on SQLAlchemy Core: listing, finding
items, deleting a response, cancelling its steps; and a response row as a record.

Each statement is built once, at import: SQLAlchemy caches its compiled form,
so a call only binds values (named ``p_*``). The hot path's statements are
not here: they are plain SQL on the drivers (:mod:`stepline.store._hot`).

Invariants:

* Deleting a response removes its events, items and steps first, in the one
  transaction the caller runs them in (events have no foreign key).
* Cancelling touches only live steps (``pending``, ``processing``): a
  terminal step is never rewritten.
* ``FIND_ITEMS`` finds only the items of responses stored under the caller's
  key (``IS NOT DISTINCT FROM``: no key matches no key).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from stepline._steps import StepState
from stepline.store._base import ResponseRecord
from stepline.store._schema import events, items, responses, steps

__all__ = [
    "CANCEL_STEPS",
    "DELETE_EVENTS",
    "DELETE_ITEMS",
    "DELETE_RESPONSE",
    "DELETE_STEPS",
    "FIND_ITEMS",
    "LIST_RESPONSES",
    "record_from_row",
]

_LIVE_STEP_STATES = [StepState.PENDING.value, StepState.PROCESSING.value]

LIST_RESPONSES = (
    sa.select(responses)
    .order_by(responses.c.created_at.desc(), responses.c.id.desc())
    .limit(sa.bindparam("p_limit"))
)
FIND_ITEMS = (
    sa.select(items.c.id, items.c.data)
    .join(responses, responses.c.id == items.c.response_id)
    .where(
        items.c.id.in_(sa.bindparam("p_ids", expanding=True)),
        responses.c.key_id.is_not_distinct_from(sa.bindparam("p_key", type_=sa.String())),
    )
    .order_by(responses.c.created_at, items.c.position)
)
DELETE_ITEMS = sa.delete(items).where(items.c.response_id == sa.bindparam("p_id"))
DELETE_EVENTS = sa.delete(events).where(events.c.response_id == sa.bindparam("p_id"))
DELETE_STEPS = sa.delete(steps).where(steps.c.response_id == sa.bindparam("p_id"))
DELETE_RESPONSE = sa.delete(responses).where(responses.c.id == sa.bindparam("p_id"))

CANCEL_STEPS = (
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


def record_from_row(row: sa.Row[Any]) -> ResponseRecord:
    """The record of a ``responses`` row."""
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
