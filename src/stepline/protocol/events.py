"""The Responses event vocabulary: numbering, encoding, and output-item bookkeeping.

Invariants:

* ``sequence_number`` starts at 0 and grows by exactly 1 per event across the
  whole response (every step, every sub-agent); :class:`ResponseEvents` is
  the one place that allocates it, and a resumed run continues from the last
  stored number.
* ``output_index`` is a position in :class:`OutputList`: items are numbered
  in the order they are added, with no gaps, across every step.
* Each event is encoded to JSON exactly once, with ``type`` as its first key
  (an SSE reader takes the event name from the bytes without decoding them).
* A text delta points at a ``message`` item and an argument delta at a
  ``function_call`` item, or at an ``mcp_call`` item for a tool the server
  runs; the clients assert this.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import orjson

from stepline.protocol.assemble import mcp_call_id
from stepline.protocol.chat_stream import AssistantTurn
from stepline.protocol.items import SERVER_LABEL, message_item
from stepline.store.base import EventRow

__all__ = [
    "TERMINAL_EVENT_TYPES",
    "ModelCallEvents",
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
    """Numbers and encodes the events of one response and hands them to ``sink``."""

    def __init__(
        self, response_id: str, sink: Callable[[EventRow], None], *, next_seq: int = 0
    ) -> None:
        self.response_id = response_id
        self._sink = sink
        self.next_seq = next_seq

    def emit(self, type_: str, fields: dict[str, Any], *, step_id: str | None = None) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        data = orjson.dumps({"type": type_, "sequence_number": seq, **fields})
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


class _ToolItem:
    __slots__ = ("arguments", "call_id", "client", "index", "item_id", "name")

    def __init__(self, *, item_id: str, index: int, call_id: str, name: str, client: bool) -> None:
        self.item_id = item_id
        self.index = index
        self.call_id = call_id
        self.name = name
        self.client = client
        self.arguments: list[str] = []


class ModelCallEvents:
    """Turns one model call's deltas into events and output items, as they arrive.

    Implements :class:`~stepline.protocol.chat_stream.DeltaSink`. ``is_client``
    says whether a tool name goes back to the client (a ``function_call``
    item) or is run by the server (an ``mcp_call`` item, finished later by
    its tool step). ``emit_events=False`` keeps the items but sends no events
    (a sub-agent's model calls are not part of the response's stream).
    """

    def __init__(
        self,
        events: ResponseEvents | None,
        output: OutputList,
        *,
        step_id: str,
        is_client: Callable[[str], bool],
    ) -> None:
        self._events = events
        self._output = output
        self._step_id = step_id
        self._is_client = is_client
        self._start = len(output.items)
        self._reasoning: tuple[str, int] | None = None
        self._reasoning_text: list[str] = []
        self._message: tuple[str, int] | None = None
        self._message_text: list[str] = []
        self._tools: dict[int, _ToolItem] = {}

    def _emit(self, type_: str, fields: dict[str, Any]) -> None:
        if self._events is not None:
            self._events.emit(type_, fields, step_id=self._step_id)

    def _add(self, item: dict[str, Any]) -> int:
        index = self._output.add(item)
        self._emit("response.output_item.added", {"output_index": index, "item": item})
        return index

    # -- DeltaSink ---------------------------------------------------------

    def on_reasoning(self, text: str) -> None:
        if self._reasoning is None:
            item_id = f"rs_{secrets.token_hex(16)}"
            index = self._add(
                {
                    "id": item_id,
                    "type": "reasoning",
                    "status": "in_progress",
                    "summary": [],
                    "content": [],
                }
            )
            self._reasoning = (item_id, index)
            self._emit(
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "reasoning_text", "text": ""},
                },
            )
        item_id, index = self._reasoning
        self._reasoning_text.append(text)
        self._emit(
            "response.reasoning_text.delta",
            {"item_id": item_id, "output_index": index, "content_index": 0, "delta": text},
        )

    def on_text(self, text: str) -> None:
        if self._message is None:
            self._close_reasoning()
            item_id = f"msg_{secrets.token_hex(16)}"
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            index = self._add(item)
            self._message = (item_id, index)
            self._emit(
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                },
            )
        item_id, index = self._message
        self._message_text.append(text)
        self._emit(
            "response.output_text.delta",
            {
                "item_id": item_id,
                "output_index": index,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
        )

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self._close_reasoning()
        self._close_message()
        client = self._is_client(name)
        item: dict[str, Any]
        if client:
            item_id = f"fc_{secrets.token_hex(16)}"
            item = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": name,
                "arguments": "",
            }
        else:
            item_id = mcp_call_id(call_id)
            item = {
                "id": item_id,
                "type": "mcp_call",
                "status": "in_progress",
                "server_label": SERVER_LABEL,
                "name": name,
                "arguments": "",
                "output": None,
                "error": None,
            }
        position = self._add(item)
        self._tools[index] = _ToolItem(
            item_id=item_id, index=position, call_id=call_id, name=name, client=client
        )

    def on_tool_arguments(self, index: int, text: str) -> None:
        tool = self._tools[index]
        tool.arguments.append(text)
        kind = "function_call" if tool.client else "mcp_call"
        self._emit(
            f"response.{kind}_arguments.delta",
            {"item_id": tool.item_id, "output_index": tool.index, "delta": text},
        )

    # -- closing -----------------------------------------------------------

    def _close_reasoning(self) -> None:
        if self._reasoning is None:
            return
        item_id, index = self._reasoning
        text = "".join(self._reasoning_text)
        part = {"type": "reasoning_text", "text": text}
        self._emit(
            "response.reasoning_text.done",
            {"item_id": item_id, "output_index": index, "content_index": 0, "text": text},
        )
        self._emit(
            "response.content_part.done",
            {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
        )
        item = {
            "id": item_id,
            "type": "reasoning",
            "status": "completed",
            "summary": [],
            "content": [part],
        }
        self._finish_item(index, item)
        self._reasoning = None

    def _close_message(self) -> None:
        if self._message is None:
            return
        item_id, index = self._message
        text = "".join(self._message_text)
        item = message_item(item_id, text)
        self._emit(
            "response.output_text.done",
            {
                "item_id": item_id,
                "output_index": index,
                "content_index": 0,
                "text": text,
                "logprobs": [],
            },
        )
        self._emit(
            "response.content_part.done",
            {
                "item_id": item_id,
                "output_index": index,
                "content_index": 0,
                "part": item["content"][0],
            },
        )
        self._finish_item(index, item)
        self._message = None

    def _finish_item(self, index: int, item: dict[str, Any]) -> None:
        self._output.replace(index, item)
        self._emit("response.output_item.done", {"output_index": index, "item": item})

    def close(self, turn: AssistantTurn) -> list[dict[str, Any]]:
        """End the model call: close every item; return the step's items in order.

        ``function_call`` items are done (the client runs them); ``mcp_call``
        items stay open until their tool step finishes.
        """
        self._close_reasoning()
        self._close_message()
        for tool in self._tools.values():
            arguments = "".join(tool.arguments)
            if tool.client:
                self._emit(
                    "response.function_call_arguments.done",
                    {
                        "item_id": tool.item_id,
                        "output_index": tool.index,
                        "name": tool.name,
                        "arguments": arguments,
                    },
                )
                item = {
                    "id": tool.item_id,
                    "type": "function_call",
                    "status": "completed",
                    "call_id": tool.call_id,
                    "name": tool.name,
                    "arguments": arguments,
                }
                self._finish_item(tool.index, item)
            else:
                self._emit(
                    "response.mcp_call_arguments.done",
                    {"item_id": tool.item_id, "output_index": tool.index, "arguments": arguments},
                )
                item = {
                    **self._output.items[tool.index],
                    "arguments": arguments,
                    "status": "calling",
                }
                self._output.replace(tool.index, item)
        return self._output.items[self._start :]

    def abort(self) -> None:
        """The model call failed: drop its items from the output.

        Events already sent for them stay in the log; the response fails or
        the call is run again, and the assembled output (built from completed
        steps only) never shows a half-streamed item.
        """
        self._output.truncate(self._start)
