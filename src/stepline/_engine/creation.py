"""A new response that its run stores itself: the record, its first steps, its first
events, in one write.

A response whose client is not told of it before it runs (all but a background
request, whose client gets its id at once) is stored by its run rather than by
the route: the route hands over an :class:`Unstored`, the run's first events
wait in its :class:`~stepline._engine.event_log.EventLog` (``unstored``), and
the loop's first steps go with the record and those events in one write
(:meth:`~stepline.store._base.StepStore.create_response`).

Invariants: the record is stored once, by :meth:`Unstored.store`, before
anything else of the response reaches the store; a reader of the log sees
nothing until then; a run that ends before recording a step stores it then.
Its lease runs from when it is stored, not from when it was accepted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stepline._engine.event_log import EventLog
from stepline._steps import NewStep, Step
from stepline.store._base import ResponseRecord, StepStore

__all__ = ["Unstored"]


@dataclass(eq=False, kw_only=True)
class Unstored:
    """A response's record, not stored yet, and the log that holds its first events."""

    record: ResponseRecord
    log: EventLog | None
    #: the clock ``record.created_at`` and its lease were read from
    clock: Callable[[], float] = time.time
    #: set once :meth:`store` has stored it
    done: bool = False

    async def store(self, store: StepStore, steps: Sequence[NewStep] = ()) -> list[Step]:
        """Store the record with ``steps`` (recorded started) and the events so far."""
        if self.done:
            raise RuntimeError(f"response {self.record.id} is stored already")
        self.done = True
        record = self.record
        if record.lease_expires_at is not None:
            waited = max(0.0, self.clock() - record.created_at)
            record = dataclasses.replace(record, lease_expires_at=record.lease_expires_at + waited)
        rows = self.log.take_unstored() if self.log is not None else []
        recorded = await store.create_response(record, steps=steps, events=rows)
        if self.log is not None:
            self.log.stored(rows)
        return recorded
