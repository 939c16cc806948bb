"""A model call run again after a crash continues what its earlier attempt sent."""

from __future__ import annotations

from typing import Any

import orjson
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from stepline._chat.stream import ChatStreamAccumulator
from stepline._engine.sinks import CLIENT, SERVER
from stepline._protocol.events import OutputList, ResponseEvents
from stepline._protocol.model_events import ModelCallEvents, PriorEmission
from stepline.store._base import EventRow

EVENTS = TypeAdapter(ResponseStreamEvent)
STEP = "step_1"


def text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def call_chunk(index: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": args}
    if name:
        function["name"] = name
    piece: dict[str, Any] = {"index": index, "function": function}
    if call_id:
        piece["id"] = call_id
    return {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}


FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


class Attempt:
    """One attempt at the model call, recording the rows it appends."""

    def __init__(self, rows: list[EventRow], output: OutputList, prior: PriorEmission | None):
        self.rows = rows
        self.first = len(rows)
        events = ResponseEvents("resp_1", rows.append, next_seq=len(rows))
        self.sink = ModelCallEvents(
            events,
            output,
            step_id=STEP,
            describe=lambda name: CLIENT if name == "ask" else SERVER,
            prior=prior,
        )
        self.accumulator = ChatStreamAccumulator(self.sink)

    def feed(self, *chunks: dict[str, Any]) -> None:
        for chunk in chunks:
            self.accumulator.feed(chunk)

    def close(self) -> list[dict[str, Any]]:
        return self.sink.close(self.accumulator.result())

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(row.data) for row in self.rows[self.first :]]


def summary(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["type"], e.get("output_index"), e.get("delta", e.get("text", e.get("arguments"))))
        for e in events
    ]


def test_a_deterministic_rerun_shows_every_piece_exactly_once() -> None:
    rows: list[EventRow] = []
    first = Attempt(rows, OutputList(), None)
    first.feed(text_chunk("Hello"), text_chunk(" brave"))  # then the process dies
    sent_before = first.events()

    second = Attempt(rows, OutputList(), PriorEmission(rows))
    second.feed(text_chunk("Hello"), text_chunk(" brave"), text_chunk(" new"), text_chunk(" world"))
    second.feed(FINISH)
    items = second.close()
    resumed = second.events()

    message_id = sent_before[0]["item"]["id"]
    assert summary(resumed) == [
        ("response.output_text.delta", 0, " new"),
        ("response.output_text.delta", 0, " world"),
        ("response.output_text.done", 0, "Hello brave new world"),
        ("response.content_part.done", 0, None),
        ("response.output_item.done", 0, None),
    ]
    assert all(e.get("item_id", message_id) == message_id for e in resumed)
    assert [e["sequence_number"] for e in sent_before + resumed] == list(range(len(rows)))
    deltas = [e["delta"] for e in sent_before + resumed if e["type"].endswith(".delta")]
    assert "".join(deltas) == "Hello brave new world"
    assert items == [resumed[-1]["item"]]
    assert items[0]["id"] == message_id
    for event in sent_before + resumed:
        EVENTS.validate_python(event)


def test_a_rerun_that_splits_pieces_differently_still_sends_each_character_once() -> None:
    rows: list[EventRow] = []
    first = Attempt(rows, OutputList(), None)
    first.feed(text_chunk("Hel"))
    second = Attempt(rows, OutputList(), PriorEmission(rows))
    second.feed(text_chunk("Hello wor"), text_chunk("ld"), FINISH)
    second.close()

    deltas = [orjson.loads(r.data) for r in rows]
    assert "".join(e["delta"] for e in deltas if e["type"] == "response.output_text.delta") == (
        "Hello world"
    )


def test_a_diverging_rerun_closes_the_earlier_item_as_incomplete_and_follows_it() -> None:
    rows: list[EventRow] = []
    first = Attempt(rows, OutputList(), None)
    first.feed(text_chunk("Maybe"))
    earlier_id = first.events()[0]["item"]["id"]

    second = Attempt(rows, OutputList(), PriorEmission(rows))
    second.feed(call_chunk(0, "call_new", "weather", '{"city":'), call_chunk(0, None, None, '"X"}'))
    second.feed(FINISH)
    items = second.close()

    assert summary(second.events()) == [
        ("response.output_text.done", 0, "Maybe"),
        ("response.content_part.done", 0, None),
        ("response.output_item.done", 0, None),
        ("response.output_item.added", 1, None),
        ("response.mcp_call_arguments.delta", 1, '{"city":'),
        ("response.mcp_call_arguments.delta", 1, '"X"}'),
        ("response.mcp_call_arguments.done", 1, '{"city":"X"}'),
    ]
    assert [(item["type"], item["status"]) for item in items] == [
        ("message", "incomplete"),
        ("mcp_call", "calling"),
    ]
    assert items[0]["id"] == earlier_id
    assert second.sink.call_items == {"call_new": items[1]["id"]}


def test_a_rerun_keeps_the_item_of_a_tool_call_whose_id_changed() -> None:
    rows: list[EventRow] = []
    first = Attempt(rows, OutputList(), None)
    first.feed(call_chunk(0, "call_old", "weather", '{"ci'))
    item_id = first.events()[0]["item"]["id"]

    second = Attempt(rows, OutputList(), PriorEmission(rows))
    second.feed(call_chunk(0, "call_new", "weather", '{"city": "Oslo"}'), FINISH)
    items = second.close()

    assert summary(second.events()) == [
        ("response.mcp_call_arguments.delta", 0, 'ty": "Oslo"}'),
        ("response.mcp_call_arguments.done", 0, '{"city": "Oslo"}'),
    ]
    assert second.sink.call_items == {"call_new": item_id}
    assert items == [
        {**first.events()[0]["item"], "arguments": '{"city": "Oslo"}', "status": "calling"}
    ]


def test_prior_items_after_completed_steps_keep_their_positions() -> None:
    rows: list[EventRow] = []
    done_item = {"id": "msg_done", "type": "message", "status": "completed"}
    first = Attempt(rows, OutputList([done_item]), None)
    first.feed(call_chunk(0, "call_1", "ask", "{}"))

    output = OutputList([done_item])
    second = Attempt(rows, output, PriorEmission(rows))
    second.feed(call_chunk(0, "call_1", "ask", "{}"), FINISH)
    items = second.close()

    assert [e["type"] for e in second.events()] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert second.events()[-1]["output_index"] == 1
    assert [item["id"] for item in output.items] == ["msg_done", items[0]["id"]]


def test_a_failed_call_closes_its_open_items_as_incomplete_and_leaves_no_output() -> None:
    rows: list[EventRow] = []
    output = OutputList()
    attempt = Attempt(rows, output, None)
    attempt.feed(text_chunk("Half"), call_chunk(0, "call_1", "weather", '{"ci'))
    attempt.sink.abort()

    assert summary(attempt.events()) == [
        ("response.output_item.added", 0, None),
        ("response.content_part.added", 0, None),
        ("response.output_text.delta", 0, "Half"),
        ("response.output_text.done", 0, "Half"),
        ("response.content_part.done", 0, None),
        ("response.output_item.done", 0, None),
        ("response.output_item.added", 1, None),
        ("response.mcp_call_arguments.delta", 1, '{"ci'),
        ("response.mcp_call_arguments.done", 1, '{"ci'),
        ("response.output_item.done", 1, None),
    ]
    done = [e["item"]["status"] for e in attempt.events() if e["type"].endswith("item.done")]
    assert done == ["completed", "incomplete"]  # the text was done when the call began
    assert output.items == []
    for event in attempt.events():
        EVENTS.validate_python(event)
