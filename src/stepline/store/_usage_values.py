"""Usage without SQL: what a usage query asks for and the rows it answers with.

:mod:`stepline.store._usage` computes the rows in SQL (SQLAlchemy Core,
loaded on the first usage read); this module imports no SQLAlchemy, so the
server's routes and the console's charts use the values without loading it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

__all__ = ["GROUPS", "Group", "UsageQuery", "UsageRow"]

Group = Literal["day", "key", "model"]
#: what usage can be grouped by, in the order rows are sorted
GROUPS: tuple[Group, ...] = ("day", "key", "model")


@dataclass(frozen=True, kw_only=True)
class UsageQuery:
    """Responses created in ``[start, end)`` (POSIX seconds), of these keys (None: any)
    and this model (None: any), grouped by ``group_by``."""

    start: float
    end: float
    key_ids: tuple[str, ...] | None = None
    model: str | None = None
    group_by: tuple[Group, ...] = GROUPS


@dataclass(frozen=True, kw_only=True)
class UsageRow:
    """One group's figures; a field the query did not group by is None."""

    day: datetime.date | None = None
    key_id: str | None = None
    model: str | None = None
    requests: int = 0
    completed: int = 0
    failed: int = 0
    incomplete: int = 0
    cancelled: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: seconds; None when no response of the group has ended
    latency_p50: float | None = None
    latency_p95: float | None = None

    @property
    def errors(self) -> int:
        return self.failed + self.incomplete + self.cancelled
