"""A run's side of its response's event log: what its stream appends, and when it is stored.

The loop shows a run only through its sink (:mod:`stepline._engine.sinks`);
the consumer that makes the Open Responses stream appends its encoded rows
here and attaches, to each step it shows, the output items it made of it.
What stays the engine's is *when* all that becomes durable, which is the
loop's rule and not the wire's:

* Between :meth:`RunLog.hold` and :meth:`RunLog.commit`, appended rows are
  kept back, then stored in the one transaction that stores a step's (or the
  response's) end: a client is told of an outcome exactly when the store has
  it. :meth:`RunLog.defer` puts an end off to the next commit, its rows held
  until then.
* :meth:`RunLog.durable` waits until every row appended so far is stored.
* What a consumer :meth:`attaches <RunLog.attach>` to a step is stored with
  that step's end, beside the engine's own result (the end takes it:
  :meth:`RunLog.attached`); the engine never reads it.
* A run without an event log (a sub-agent, a library run) appends nothing
  and commits nothing; its steps' ends go straight to the store, with what
  was attached to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stepline._engine.event_log import EventLog
from stepline._steps import Step
from stepline.store._base import EndResult, EventRow, ResponseEnd, StepEnd

__all__ = ["RunLog"]

StepRows = Callable[[str], Awaitable[Sequence[EventRow]]]


async def _no_rows(step_id: str) -> Sequence[EventRow]:
    return ()


class RunLog:
    """One run's appends to its response's event log (``log``; None: nothing is sent).

    ``step_rows`` reads back what an earlier attempt of a step stored (by step id).
    """

    __slots__ = ("_attachments", "_deferred", "_held", "_log", "_step_rows", "appended")

    def __init__(
        self,
        log: EventLog | None,
        *,
        step_rows: StepRows = _no_rows,
        attachments: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._log = log
        self._step_rows = step_rows
        self._held: list[EventRow] | None = None
        #: step ends that go with the next commit (see defer)
        self._deferred: list[StepEnd] = []
        self._attachments: dict[str, dict[str, Any]] = (
            attachments if attachments is not None else {}
        )
        #: rows appended by this run so far
        self.appended = 0

    @property
    def sends(self) -> bool:
        """Rows go to an event log (a client may be reading it)."""
        return self._log is not None

    @property
    def first_seq(self) -> int:
        """The sequence number this run's first row gets (an earlier run stored those before)."""
        return self._log.first_seq if self._log is not None else 0

    def nested(self) -> RunLog:
        """A sub-agent's: no rows, its steps' attachments kept with this run's."""
        return RunLog(None, attachments=self._attachments)

    # -- what the stream appends -------------------------------------------

    def append(self, row: EventRow) -> None:
        self.appended += 1
        held = self._held
        if held is not None:
            held.append(row)
        elif self._log is not None:
            self._log.append(row)
        else:
            raise RuntimeError("a run without an event log sends no rows")

    def attach(self, step_id: str, fields: dict[str, Any]) -> None:
        """Store ``fields`` in the step's result, with its end."""
        self._attachments.setdefault(step_id, {}).update(fields)

    def attached(self, step_id: str) -> dict[str, Any]:
        """What was attached to the step (taken: its end stores it)."""
        return self._attachments.pop(step_id, {})

    async def shown(self, step: Step) -> Sequence[EventRow]:
        """What an earlier attempt of ``step`` stored of its events (none on a first)."""
        if self._log is None or step.attempt <= 1:
            return ()
        return await self._step_rows(step.id)

    # -- when it is stored ---------------------------------------------------

    def hold(self) -> None:
        """Keep the next rows back until :meth:`commit` stores them with an end."""
        if self._log is not None and self._held is None:
            self._held = []

    def commit(self, end: StepEnd | ResponseEnd) -> asyncio.Future[EndResult]:
        """Submit the held rows, the deferred ends and ``end`` to be stored in one
        transaction, at once; the future gets ``end``'s result."""
        assert self._log is not None
        held, self._held = self._held or [], None
        deferred, self._deferred = self._deferred, []
        return self._log.commit(held, *deferred, end)

    def defer(self, end: StepEnd) -> None:
        """Store ``end`` with the next :meth:`commit`, in its transaction, and keep the
        rows held until then: for the last step of a run, whose end and the
        response's can be stored together (a crash before that runs the step again,
        and nobody was told of its outcome)."""
        assert self._log is not None
        self._deferred.append(end)

    async def durable(self) -> None:
        """Wait until every row appended so far is stored."""
        if self._log is not None:
            await self._log.wait_durable()
