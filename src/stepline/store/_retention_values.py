"""Retention without SQL: the policy a sweep follows, its batch size and what it counts.

:mod:`stepline.store._retention` sweeps in SQL (SQLAlchemy Core, loaded on
the first sweep); this module imports no SQLAlchemy, so a server whose
config keeps every response forever never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_BATCH_SIZE", "PurgeCounts", "RetentionPolicy"]

#: responses deleted per transaction
DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How long responses are kept: ``default`` for every key not in ``keys`` (and
    for responses without a key); ``keys`` by key id. None: kept forever."""

    default: float | None = None
    keys: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when some response may ever be deleted."""
        return self.default is not None or any(age is not None for age in self.keys.values())


@dataclass(frozen=True, kw_only=True)
class PurgeCounts:
    """Rows deleted (or, for a dry run, that would be); ``kept``: responses past their
    age kept because a newer response continues them."""

    responses: int = 0
    steps: int = 0
    events: int = 0
    items: int = 0
    kept: int = 0

    def __add__(self, other: PurgeCounts) -> PurgeCounts:
        return PurgeCounts(
            responses=self.responses + other.responses,
            steps=self.steps + other.steps,
            events=self.events + other.events,
            items=self.items + other.items,
            kept=self.kept + other.kept,
        )
