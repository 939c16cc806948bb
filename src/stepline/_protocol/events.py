"""The Responses event vocabulary: numbering, encoding, and output-item bookkeeping.

Invariants:

* ``sequence_number`` starts at 0 and grows by exactly 1 per event across the
  whole response (every step, every sub-agent); :class:`ResponseEvents` is
  the one place that allocates it, and a resumed run continues from the last
  stored number.
* ``output_index`` is a position in :class:`OutputList`: items are numbered
  in the order they are added, with no gaps, across every step.
* Each event is encoded to JSON exactly once, with ``type`` as its first key
  (an SSE reader takes the event name from the bytes without decoding them),
  into bytes of exactly its size: orjson's own result keeps a 4 KB buffer,
  which a response's in-memory log would hold for every event.
* The events of one model call are made by
  :mod:`stepline._protocol.model_events`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from stepline.store._base import EndResult, EventRow, ResponseEnd, StepEnd

__all__ = [
    "TERMINAL_EVENT_TYPES",
    "OutputList",
    "ResponseEvents",
    "event_type",
]

TERMINAL_EVENT_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete"})

_TYPE_START = len(b'{"type":"')


def event_type(data: bytes) -> bytes:
    """The event name of an encoded event, read without decoding the JSON."""
    return data[_TYPE_START : data.index(b'"', _TYPE_START)]


class Committer(Protocol):
    """Submits rows together with ends, to be stored atomically (``EventLog.commit``);
    the future gets the last end's result."""

    def __call__(
        self, rows: Sequence[EventRow], *ends: StepEnd | ResponseEnd
    ) -> asyncio.Future[EndResult]: ...


class ResponseEvents:
    """Numbers and encodes the events of one response and hands them to ``sink``.

    Between :meth:`hold` and :meth:`commit`, events are kept back and then
    stored together with a step's or the response's end (``commit``), so the
    announcement of an outcome is durable exactly when the outcome is.
    Without a committer (a log-less run) the end is left to the caller.
    """

    def __init__(
        self,
        response_id: str,
        sink: Callable[[EventRow], None],
        *,
        next_seq: int = 0,
        durable: Callable[[], Awaitable[None]] | None = None,
        commit: Committer | None = None,
    ) -> None:
        self.response_id = response_id
        self._sink = sink
        self.next_seq = next_seq
        self._durable = durable
        self._commit = commit
        self._held: list[EventRow] | None = None
        #: step ends that go with the next commit (see defer)
        self._deferred: list[StepEnd] = []

    @property
    def commits(self) -> bool:
        """Ends go through :meth:`commit` (with their events), not straight to the store."""
        return self._commit is not None

    async def durable(self) -> None:
        """Wait until every event handed to the sink so far is stored."""
        if self._durable is not None:
            await self._durable()

    def hold(self) -> None:
        """Keep the next events back until :meth:`commit` stores them with an end."""
        if self._commit is not None and self._held is None:
            self._held = []

    def commit(self, end: StepEnd | ResponseEnd) -> asyncio.Future[EndResult]:
        """Submit the held events, the deferred ends and ``end`` to be stored in one
        transaction, at once; the future gets ``end``'s result."""
        assert self._commit is not None
        held, self._held = self._held or [], None
        deferred, self._deferred = self._deferred, []
        return self._commit(held, *deferred, end)

    def defer(self, end: StepEnd) -> None:
        """Store ``end`` with the next :meth:`commit`, in its transaction, and keep the
        events held until then: for the last step of a run, whose end and the
        response's can be stored together (a crash before that runs the step again,
        and nobody was told of its outcome)."""
        assert self._commit is not None
        self._deferred.append(end)

    def emit(self, type_: str, fields: dict[str, Any], *, step_id: str | None = None) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        data = memoryview(orjson.dumps({"type": type_, "sequence_number": seq, **fields})).tobytes()
        row = EventRow(response_id=self.response_id, seq=seq, data=data, step_id=step_id)
        if self._held is not None:
            self._held.append(row)
        else:
            self._sink(row)
        return seq

    def lifecycle(self, type_: str, response: dict[str, Any]) -> int:
        return self.emit(type_, {"response": response})


class OutputList:
    """The output items of a response in order; an item's index is its position."""

    def __init__(self, items: list[dict[str, Any]] | None = None) -> None:
        self.items: list[dict[str, Any]] = list(items or ())
        self._index = {item["id"]: index for index, item in enumerate(self.items)}

    def add(self, item: dict[str, Any]) -> int:
        index = len(self.items)
        self.items.append(item)
        self._index[item["id"]] = index
        return index

    def index_of(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def replace(self, index: int, item: dict[str, Any]) -> None:
        self.items[index] = item

    def truncate(self, length: int) -> None:
        for item in self.items[length:]:
            del self._index[item["id"]]
        del self.items[length:]
