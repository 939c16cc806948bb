"""Responses stored the way the loop stores them, for the retention and usage tests.

:func:`store_response` writes a response with model-call steps (and their
usage), an event log and, once terminal, its result and items, through the
store's own methods; :func:`rows_of` counts what every table keyed by
response holds for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline._steps import NewStep, StepKind, StepState
from stepline.store import EventRow, ResponseRecord, SqlStore
from stepline.store._base import TERMINAL_STATUSES
from stepline.store._schema import metadata, responses

__all__ = ["Stored", "rows_of", "store_response"]


@dataclass(frozen=True, kw_only=True)
class Stored:
    """What a test stored for one response, to derive expected figures from."""

    id: str
    created_at: float
    status: str
    key_id: str | None
    model: str
    #: (input_tokens, output_tokens, cached_tokens, reasoning_tokens) of each model call
    calls: list[tuple[int, int, int, int]] = field(default_factory=list)
    completed_at: float | None = None
    events: int = 0
    items: int = 0


async def store_response(
    store: SqlStore,
    response_id: str,
    *,
    created_at: float,
    status: str = "completed",
    key_id: str | None = None,
    model: str = "scripted",
    previous: str | None = None,
    calls: list[tuple[int, int, int, int]] | None = None,
    duration: float | None = 2.0,
    events: int = 3,
    items: int = 2,
) -> Stored:
    """Store a response ``created_at`` with one completed model call per ``calls`` entry,
    ``events`` event rows, and (terminal) its result with ``items`` items; ``duration``
    seconds after ``created_at`` is when a completed one completed."""
    calls = [(10, 5, 1, 0)] if calls is None else calls
    await store.create_response(
        ResponseRecord(
            id=response_id,
            created_at=created_at,
            status="in_progress",
            model=model,
            body={"input": "hi"},
            previous_response_id=previous,
            owner="worker",
            lease_expires_at=created_at + 60,
            key_id=key_id,
        )
    )
    for input_tokens, output_tokens, cached, reasoning in calls:
        [step] = await store.record_steps(
            response_id,
            scope=None,
            steps=[NewStep(kind=StepKind.MODEL_CALL, request={"model": model})],
            start=True,
        )
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": cached,
            "reasoning_tokens": reasoning,
        }
        await store.finish_step(
            step.id, state=StepState.COMPLETED, response={"items": [], "usage": usage}
        )
    await store.append_events(
        [EventRow(response_id=response_id, seq=seq, data=b"{}") for seq in range(events)]
    )
    completed_at = None
    if status in TERMINAL_STATUSES:
        completed_at = created_at + duration if status == "completed" and duration else None
        await store.finish_response(
            response_id,
            status=status,
            result={"id": response_id, "status": status},
            completed_at=completed_at,
            items=[{"id": f"msg_{response_id}_{n}", "type": "message"} for n in range(items)],
        )
    elif status != "in_progress":
        await store.set_status(response_id, status)
    return Stored(
        id=response_id,
        created_at=created_at,
        status=status,
        key_id=key_id,
        model=model,
        calls=calls,
        completed_at=completed_at,
        events=events,
        items=items if status in TERMINAL_STATUSES else 0,
    )


def _keyed_by_response() -> list[sa.Table]:
    return [table for table in metadata.sorted_tables if "response_id" in table.c]


async def rows_of(store: SqlStore, response_id: str) -> dict[str, int]:
    """Rows of the response in ``responses`` and in every table with a ``response_id``."""
    columns = [responses.c.id, *(table.c.response_id for table in _keyed_by_response())]

    async def work(connection: AsyncConnection) -> dict[str, int]:
        counts: dict[str, int] = {}
        for column in columns:
            count = (
                sa.select(sa.func.count()).select_from(column.table).where(column == response_id)
            )
            counts[column.table.name] = int((await connection.execute(count)).scalar_one())
        return counts

    return await store.run_read(work)
