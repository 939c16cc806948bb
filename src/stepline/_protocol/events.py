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

from collections.abc import Callable
from typing import Any

import orjson

from stepline.store._base import EventRow

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


class ResponseEvents:
    """Numbers and encodes the events of one response and hands each row to ``sink``
    (the run's :class:`~stepline._engine.run_log.RunLog`, which decides when it is
    stored)."""

    def __init__(
        self,
        response_id: str,
        sink: Callable[[EventRow], None],
        *,
        next_seq: int = 0,
    ) -> None:
        self.response_id = response_id
        self._sink = sink
        self.next_seq = next_seq

    def emit(self, type_: str, fields: dict[str, Any], *, step_id: str | None = None) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        data = memoryview(orjson.dumps({"type": type_, "sequence_number": seq, **fields})).tobytes()
        self._sink(EventRow(response_id=self.response_id, seq=seq, data=data, step_id=step_id))
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
