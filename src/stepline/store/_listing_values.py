"""The console's listing without SQL: what a page asks for and shows, and memory's answers.

:mod:`stepline.store._listing` answers these questions in SQL (SQLAlchemy
Core, loaded on the console's first read); this module imports no
SQLAlchemy, so the server's pages and :class:`~stepline.store.MemoryStore`
use the values without loading it.

Invariants:

* A page is ordered newest first by (``created_at``, ``id``) and continues
  from a :class:`Cursor` (keyset pagination): a response created while an
  operator pages never shifts the later pages, and no page repeats a row.
* The in-memory answers (:func:`summaries_in_memory`, :func:`tree_in_memory`)
  have the SQL's order, filters and cursor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepline._steps import Step
from stepline.store._base import TERMINAL_STATUSES, ResponseRecord

__all__ = [
    "Cursor",
    "ResponsePage",
    "ResponseQuery",
    "ResponseSummary",
    "ResponseTree",
    "last_finished",
    "page_of",
    "summaries_in_memory",
    "tree_in_memory",
]


@dataclass(frozen=True, kw_only=True)
class Cursor:
    """Where a page ends: the (``created_at``, ``id``) of its last response."""

    created_at: float
    id: str

    def encode(self) -> str:
        # repr round-trips a float exactly, so the next page starts exactly here
        return f"{self.created_at!r}~{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor ``encode`` wrote, or None for anything else."""
        created, separator, response_id = text.partition("~")
        if not separator or not response_id:
            return None
        try:
            created_at = float(created)
        except ValueError:
            return None
        if created_at != created_at or created_at in (float("inf"), float("-inf")):
            return None
        return cls(created_at=created_at, id=response_id)


@dataclass(frozen=True, kw_only=True)
class ResponseQuery:
    """Which responses a page shows. ``None`` filters nothing; ``key_ids`` may hold
    ``None`` for responses created without a key."""

    since: float | None = None
    status: str | None = None
    model: str | None = None
    key_ids: tuple[str | None, ...] | None = None
    before: Cursor | None = None
    limit: int = 50


@dataclass(frozen=True, kw_only=True)
class ResponseSummary:
    """One row of the console's list: what an operator scans for."""

    id: str
    created_at: float
    status: str
    model: str
    key_id: str | None
    background: bool
    store: bool
    previous_response_id: str | None
    completed_at: float | None
    #: when its last step finished (None before any did)
    last_step_finished_at: float | None
    step_count: int
    input_tokens: int | None
    output_tokens: int | None
    error_code: str | None
    error_message: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def ended_at(self) -> float | None:
        """When it ended: its last step's end, else its completion (stored in whole
        seconds, as the response object has it); None while it runs."""
        if not self.terminal:
            return None
        if self.last_step_finished_at is not None:
            return self.last_step_finished_at
        return self.completed_at


@dataclass(frozen=True, kw_only=True)
class ResponsePage:
    summaries: list[ResponseSummary]
    #: where the next (older) page starts; None on the last page
    next: Cursor | None


@dataclass(frozen=True, kw_only=True)
class ResponseTree:
    """A response's summary, its request body and every step, all scopes, by sequence."""

    summary: ResponseSummary
    body: dict[str, Any]
    steps: list[Step]


def page_of(summaries: list[ResponseSummary], limit: int) -> ResponsePage:
    """The page of ``summaries`` (up to ``limit`` + 1, newest first): ``limit`` of them,
    and where the next page starts when there was one more."""
    limit = max(limit, 0)
    if len(summaries) <= limit:
        return ResponsePage(summaries=summaries, next=None)
    shown = summaries[:limit]
    last = shown[-1] if shown else None
    return ResponsePage(
        summaries=shown,
        next=None if last is None else Cursor(created_at=last.created_at, id=last.id),
    )


def last_finished(found: Iterable[Step]) -> float | None:
    """When the last of ``found`` finished; None before any did."""
    finished = [step.finished_at for step in found if step.finished_at is not None]
    return max(finished) if finished else None


# -- memory ---------------------------------------------------------------------


def _matches(record: ResponseRecord, query: ResponseQuery) -> bool:
    if query.since is not None and record.created_at < query.since:
        return False
    if query.status is not None and record.status != query.status:
        return False
    if query.model is not None and record.model != query.model:
        return False
    if query.key_ids is not None and record.key_id not in query.key_ids:
        return False
    before = query.before
    return before is None or (record.created_at, record.id) < (before.created_at, before.id)


def _memory_summary(record: ResponseRecord, chain: Sequence[Step]) -> ResponseSummary:
    result: Mapping[str, Any] = record.result or {}
    usage = result.get("usage") or {}
    error = result.get("error") or {}
    return ResponseSummary(
        id=record.id,
        created_at=record.created_at,
        status=record.status,
        model=record.model,
        key_id=record.key_id,
        background=record.background,
        store=record.store,
        previous_response_id=record.previous_response_id,
        completed_at=record.completed_at,
        last_step_finished_at=last_finished(chain),
        step_count=len(chain),
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        error_code=error.get("code"),
        error_message=error.get("message"),
    )


def summaries_in_memory(
    records: Iterable[ResponseRecord],
    chains: Mapping[str, Sequence[Step]],
    query: ResponseQuery,
) -> ResponsePage:
    """:func:`list_summaries` over an in-memory store's records and step chains."""
    newest = sorted(
        (record for record in records if _matches(record, query)),
        key=lambda record: (record.created_at, record.id),
        reverse=True,
    )[: max(query.limit, 0) + 1]
    summaries = [_memory_summary(record, chains.get(record.id, ())) for record in newest]
    return page_of(summaries, query.limit)


def tree_in_memory(record: ResponseRecord | None, chain: Sequence[Step]) -> ResponseTree | None:
    """:func:`load_tree` over an in-memory store's record and its steps (copies)."""
    if record is None:
        return None
    ordered = sorted(chain, key=lambda step: step.sequence)
    return ResponseTree(
        summary=_memory_summary(record, ordered), body=record.body, steps=list(ordered)
    )
