"""Model-call deltas -> Responses events: the whole event list, checked against openai's types."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from openai.types.responses import ResponseOutputItem, ResponseStreamEvent
from pydantic import TypeAdapter

from stepline._chat.stream import ChatStreamAccumulator
from stepline._engine.sinks import CLIENT, SERVER, ToolView
from stepline._protocol.events import TERMINAL_EVENT_TYPES, OutputList, ResponseEvents, event_type
from stepline._protocol.model_events import ModelCallEvents
from stepline._protocol.server_items import mcp_call_id
from stepline.store._base import EventRow

RESPONSE_ID = "resp_test"
STEP_ID = "step_0"
CLIENT_TOOLS = frozenset({"ask_user"})
MCP_SERVER_ID = mcp_call_id("call_server", STEP_ID)


def describe(name: str) -> ToolView:
    return CLIENT if name in CLIENT_TOOLS else SERVER


STREAM_EVENT = TypeAdapter[Any](ResponseStreamEvent)
OUTPUT_ITEM = TypeAdapter[Any](ResponseOutputItem)

_RANDOM_ID = re.compile(r"(rs|msg|fc)_[0-9a-f]{32}")


def normalise(events: list[Any]) -> list[Any]:
    """Replace random item ids by ``<prefix#n>``, numbered in order of appearance."""
    names: dict[str, str] = {}

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: rename(inner) for key, inner in value.items()}
        if isinstance(value, list):
            return [rename(inner) for inner in value]
        if isinstance(value, str) and _RANDOM_ID.fullmatch(value):
            if value not in names:
                prefix = value.split("_", 1)[0]
                count = sum(1 for name in names.values() if name.startswith(f"<{prefix}#"))
                names[value] = f"<{prefix}#{count + 1}>"
            return names[value]
        return value

    return [rename(event) for event in events]


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def tool_delta(index: int, arguments: str, *, call_id: str = "", name: str = "") -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        piece["id"] = call_id
    if name:
        piece["function"]["name"] = name
    return {"tool_calls": [piece]}


class Recorder:
    """The event sink of a response: keeps every EventRow it is handed."""

    def __init__(self) -> None:
        self.rows: list[EventRow] = []

    def __call__(self, row: EventRow) -> None:
        self.rows.append(row)

    def decoded(self) -> list[dict[str, Any]]:
        return [orjson.loads(row.data) for row in self.rows]


def run_model_call(
    deltas: list[dict[str, Any]],
    *,
    output: OutputList | None = None,
    events: ResponseEvents | None = None,
    recorder: Recorder | None = None,
) -> tuple[Recorder, OutputList, list[dict[str, Any]]]:
    recorder = recorder or Recorder()
    output = output if output is not None else OutputList()
    if events is None:
        events = ResponseEvents(RESPONSE_ID, recorder)
    sink = ModelCallEvents(
        events,
        output,
        step_id=STEP_ID,
        describe=describe,
    )
    accumulator = ChatStreamAccumulator(sink)
    for delta in deltas:
        accumulator.feed(chunk(delta))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    items = sink.close(accumulator.result())
    return recorder, output, items


FULL_TURN = [
    {"role": "assistant", "reasoning_content": "Let me"},
    {"reasoning_content": " think."},
    {"content": "Hel"},
    {"content": "lo."},
    tool_delta(0, "", call_id="call_client", name="ask_user"),
    tool_delta(0, '{"q":'),
    tool_delta(1, '{"q"', call_id="call_server", name="search"),
    tool_delta(0, ' "city?"}'),
    tool_delta(1, ': "cats"}'),
]

REASONING_DONE = {
    "id": "<rs#1>",
    "type": "reasoning",
    "status": "completed",
    "summary": [],
    "content": [{"type": "reasoning_text", "text": "Let me think."}],
}
TEXT_PART_DONE = {"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}
MESSAGE_DONE = {
    "id": "<msg#1>",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [TEXT_PART_DONE],
    "phase": "commentary",
}
FUNCTION_CALL_DONE = {
    "id": "<fc#1>",
    "type": "function_call",
    "status": "completed",
    "call_id": "call_client",
    "name": "ask_user",
    "arguments": '{"q": "city?"}',
}
MCP_CALL_OPEN = {
    "id": MCP_SERVER_ID,
    "type": "mcp_call",
    "status": "calling",
    "server_label": "stepline",
    "name": "search",
    "arguments": '{"q": "cats"}',
    "output": None,
    "error": None,
}

FULL_TURN_EVENTS: list[dict[str, Any]] = [
    {
        "type": "response.output_item.added",
        "sequence_number": 0,
        "output_index": 0,
        "item": {
            "id": "<rs#1>",
            "type": "reasoning",
            "status": "in_progress",
            "summary": [],
            "content": [],
        },
    },
    {
        "type": "response.content_part.added",
        "sequence_number": 1,
        "item_id": "<rs#1>",
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "reasoning_text", "text": ""},
    },
    {
        "type": "response.reasoning_text.delta",
        "sequence_number": 2,
        "item_id": "<rs#1>",
        "output_index": 0,
        "content_index": 0,
        "delta": "Let me",
    },
    {
        "type": "response.reasoning_text.delta",
        "sequence_number": 3,
        "item_id": "<rs#1>",
        "output_index": 0,
        "content_index": 0,
        "delta": " think.",
    },
    {
        "type": "response.reasoning_text.done",
        "sequence_number": 4,
        "item_id": "<rs#1>",
        "output_index": 0,
        "content_index": 0,
        "text": "Let me think.",
    },
    {
        "type": "response.content_part.done",
        "sequence_number": 5,
        "item_id": "<rs#1>",
        "output_index": 0,
        "content_index": 0,
        "part": {"type": "reasoning_text", "text": "Let me think."},
    },
    {
        "type": "response.output_item.done",
        "sequence_number": 6,
        "output_index": 0,
        "item": REASONING_DONE,
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 7,
        "output_index": 1,
        "item": {
            "id": "<msg#1>",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        },
    },
    {
        "type": "response.content_part.added",
        "sequence_number": 8,
        "item_id": "<msg#1>",
        "output_index": 1,
        "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 9,
        "item_id": "<msg#1>",
        "output_index": 1,
        "content_index": 0,
        "delta": "Hel",
        "logprobs": [],
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 10,
        "item_id": "<msg#1>",
        "output_index": 1,
        "content_index": 0,
        "delta": "lo.",
        "logprobs": [],
    },
    {
        "type": "response.output_text.done",
        "sequence_number": 11,
        "item_id": "<msg#1>",
        "output_index": 1,
        "content_index": 0,
        "text": "Hello.",
        "logprobs": [],
    },
    {
        "type": "response.content_part.done",
        "sequence_number": 12,
        "item_id": "<msg#1>",
        "output_index": 1,
        "content_index": 0,
        "part": TEXT_PART_DONE,
    },
    {
        "type": "response.output_item.done",
        "sequence_number": 13,
        "output_index": 1,
        "item": MESSAGE_DONE,
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 14,
        "output_index": 2,
        "item": {
            "id": "<fc#1>",
            "type": "function_call",
            "status": "in_progress",
            "call_id": "call_client",
            "name": "ask_user",
            "arguments": "",
        },
    },
    {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 15,
        "item_id": "<fc#1>",
        "output_index": 2,
        "delta": '{"q":',
    },
    {
        "type": "response.output_item.added",
        "sequence_number": 16,
        "output_index": 3,
        "item": {
            "id": MCP_SERVER_ID,
            "type": "mcp_call",
            "status": "in_progress",
            "server_label": "stepline",
            "name": "search",
            "arguments": "",
            "output": None,
            "error": None,
        },
    },
    {
        "type": "response.mcp_call_arguments.delta",
        "sequence_number": 17,
        "item_id": MCP_SERVER_ID,
        "output_index": 3,
        "delta": '{"q"',
    },
    {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 18,
        "item_id": "<fc#1>",
        "output_index": 2,
        "delta": ' "city?"}',
    },
    {
        "type": "response.mcp_call_arguments.delta",
        "sequence_number": 19,
        "item_id": MCP_SERVER_ID,
        "output_index": 3,
        "delta": ': "cats"}',
    },
    {
        "type": "response.function_call_arguments.done",
        "sequence_number": 20,
        "item_id": "<fc#1>",
        "output_index": 2,
        "name": "ask_user",
        "arguments": '{"q": "city?"}',
    },
    {
        "type": "response.output_item.done",
        "sequence_number": 21,
        "output_index": 2,
        "item": FUNCTION_CALL_DONE,
    },
    {
        "type": "response.mcp_call_arguments.done",
        "sequence_number": 22,
        "item_id": MCP_SERVER_ID,
        "output_index": 3,
        "arguments": '{"q": "cats"}',
    },
]


def test_full_turn_emits_the_whole_expected_event_list() -> None:
    recorder, _, _ = run_model_call(FULL_TURN)
    assert normalise(recorder.decoded()) == FULL_TURN_EVENTS


def test_full_turn_returns_and_keeps_its_items_in_emission_order() -> None:
    _, output, items = run_model_call(FULL_TURN)
    expected = [REASONING_DONE, MESSAGE_DONE, FUNCTION_CALL_DONE, MCP_CALL_OPEN]
    [normalised_items, normalised_output] = normalise([items, output.items])
    assert normalised_items == expected
    assert normalised_output == expected
    for index, item in enumerate(output.items):
        assert output.index_of(item["id"]) == index


def test_full_turn_numbering_has_no_gaps() -> None:
    recorder, _, _ = run_model_call(FULL_TURN)
    events = recorder.decoded()
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [row.seq for row in recorder.rows] == list(range(len(events)))
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [0, 1, 2, 3]
    # every event that names an item names the item added at its output_index
    ids_by_index = {
        e["output_index"]: e["item"]["id"]
        for e in events
        if e["type"] == "response.output_item.added"
    }
    for event in events:
        if "item_id" in event:
            assert ids_by_index[event["output_index"]] == event["item_id"]
        if "item" in event:
            assert ids_by_index[event["output_index"]] == event["item"]["id"]


def test_rows_carry_the_response_and_step_and_encode_type_first() -> None:
    recorder, _, _ = run_model_call(FULL_TURN)
    assert {(row.response_id, row.step_id) for row in recorder.rows} == {(RESPONSE_ID, STEP_ID)}
    for row in recorder.rows:
        assert row.data.startswith(b'{"type":"')
        assert event_type(row.data).decode() == orjson.loads(row.data)["type"]


def test_every_event_validates_as_an_openai_stream_event() -> None:
    recorder, _, _ = run_model_call(FULL_TURN)
    for event in recorder.decoded():
        parsed = STREAM_EVENT.validate_python(event)
        assert parsed.type == event["type"]
        assert parsed.sequence_number == event["sequence_number"]


def test_every_returned_item_validates_as_an_openai_output_item() -> None:
    _, _, items = run_model_call(FULL_TURN)
    assert [OUTPUT_ITEM.validate_python(item).type for item in items] == [
        "reasoning",
        "message",
        "function_call",
        "mcp_call",
    ]


def test_text_only_turn() -> None:
    recorder, output, items = run_model_call([{"content": "Hi"}, {"content": "!"}])
    assert normalise(recorder.decoded()) == [
        {
            "type": "response.output_item.added",
            "sequence_number": 0,
            "output_index": 0,
            "item": {
                "id": "<msg#1>",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        },
        {
            "type": "response.content_part.added",
            "sequence_number": 1,
            "item_id": "<msg#1>",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "item_id": "<msg#1>",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 3,
            "item_id": "<msg#1>",
            "output_index": 0,
            "content_index": 0,
            "delta": "!",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "sequence_number": 4,
            "item_id": "<msg#1>",
            "output_index": 0,
            "content_index": 0,
            "text": "Hi!",
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "sequence_number": 5,
            "item_id": "<msg#1>",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []},
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 6,
            "output_index": 0,
            "item": {
                "id": "<msg#1>",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": []}
                ],
                "phase": "final_answer",
            },
        },
    ]
    assert items == output.items
    assert len(items) == 1


def test_second_model_call_continues_output_index_and_sequence() -> None:
    recorder = Recorder()
    events = ResponseEvents(RESPONSE_ID, recorder)
    output = OutputList()
    run_model_call(FULL_TURN, output=output, events=events, recorder=recorder)
    first = len(recorder.rows)
    _, _, items = run_model_call(
        [tool_delta(0, "{}", call_id="call_again", name="search")],
        output=output,
        events=events,
        recorder=recorder,
    )
    assert recorder.decoded()[first:] == [
        {
            "type": "response.output_item.added",
            "sequence_number": first,
            "output_index": 4,
            "item": {
                "id": mcp_call_id("call_again", STEP_ID),
                "type": "mcp_call",
                "status": "in_progress",
                "server_label": "stepline",
                "name": "search",
                "arguments": "",
                "output": None,
                "error": None,
            },
        },
        {
            "type": "response.mcp_call_arguments.delta",
            "sequence_number": first + 1,
            "item_id": mcp_call_id("call_again", STEP_ID),
            "output_index": 4,
            "delta": "{}",
        },
        {
            "type": "response.mcp_call_arguments.done",
            "sequence_number": first + 2,
            "item_id": mcp_call_id("call_again", STEP_ID),
            "output_index": 4,
            "arguments": "{}",
        },
    ]
    assert [item["id"] for item in items] == [mcp_call_id("call_again", STEP_ID)]
    assert len(output.items) == 5
    assert output.index_of(mcp_call_id("call_again", STEP_ID)) == 4


def test_arguments_held_before_the_name_are_sent_with_the_announcement() -> None:
    recorder, _, _ = run_model_call(
        [
            tool_delta(0, '{"q":', call_id="call_late"),
            tool_delta(0, ' "x"}', name="ask_user"),
        ]
    )
    assert [(e["type"], e.get("delta")) for e in recorder.decoded()] == [
        ("response.output_item.added", None),
        ("response.function_call_arguments.delta", '{"q":'),
        ("response.function_call_arguments.delta", ' "x"}'),
        ("response.function_call_arguments.done", None),
        ("response.output_item.done", None),
    ]


def test_without_events_the_items_are_still_built() -> None:
    output = OutputList()
    sink = ModelCallEvents(None, output, step_id=STEP_ID, describe=lambda name: SERVER)
    accumulator = ChatStreamAccumulator(sink)
    accumulator.feed(chunk({"content": "quiet"}, finish_reason="stop"))
    items = sink.close(accumulator.result())
    [normalised] = normalise([items])
    assert normalised == [
        {
            "id": "<msg#1>",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "quiet", "annotations": [], "logprobs": []}
            ],
            "phase": "final_answer",
        }
    ]


# -- ResponseEvents ---------------------------------------------------------------


def test_response_events_number_from_next_seq_and_return_the_number() -> None:
    recorder = Recorder()
    events = ResponseEvents(RESPONSE_ID, recorder, next_seq=7)
    response = {"id": RESPONSE_ID, "object": "response", "status": "in_progress", "output": []}
    assert events.lifecycle("response.in_progress", response) == 7
    assert events.emit("response.mcp_call.in_progress", {"item_id": "mcp_a"}, step_id="s") == 8
    assert events.next_seq == 9
    assert recorder.rows == [
        EventRow(
            response_id=RESPONSE_ID,
            seq=7,
            data=orjson.dumps(
                {"type": "response.in_progress", "sequence_number": 7, "response": response}
            ),
            step_id=None,
        ),
        EventRow(
            response_id=RESPONSE_ID,
            seq=8,
            data=b'{"type":"response.mcp_call.in_progress","sequence_number":8,"item_id":"mcp_a"}',
            step_id="s",
        ),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "response.created",
        "response.output_text.delta",
        "response.mcp_call_arguments.done",
        "error",
    ],
)
def test_event_type_reads_the_name_from_the_bytes(name: str) -> None:
    recorder = Recorder()
    ResponseEvents(RESPONSE_ID, recorder).emit(name, {"note": 'a "quoted" value'})
    assert event_type(recorder.rows[0].data) == name.encode()


def test_terminal_event_types() -> None:
    assert (
        frozenset({"response.completed", "response.failed", "response.incomplete"})
        == TERMINAL_EVENT_TYPES
    )


# -- OutputList and abort ---------------------------------------------------------


def test_output_list_indexes_items_by_position() -> None:
    output = OutputList([{"id": "a"}, {"id": "b"}])
    assert output.add({"id": "c"}) == 2
    assert [output.index_of(name) for name in ("a", "b", "c", "missing")] == [0, 1, 2, None]
    output.replace(1, {"id": "b", "status": "completed"})
    assert output.items == [{"id": "a"}, {"id": "b", "status": "completed"}, {"id": "c"}]
    output.truncate(1)
    assert output.items == [{"id": "a"}]
    assert [output.index_of(name) for name in ("a", "b", "c")] == [0, None, None]


def test_abort_removes_the_failed_calls_items_and_keeps_earlier_ones() -> None:
    earlier = {"id": "msg_earlier", "type": "message", "status": "completed"}
    output = OutputList([earlier])
    recorder = Recorder()
    sink = ModelCallEvents(
        ResponseEvents(RESPONSE_ID, recorder),
        output,
        step_id=STEP_ID,
        describe=describe,
    )
    accumulator = ChatStreamAccumulator(sink)
    for delta in FULL_TURN:
        accumulator.feed(chunk(delta))
    added = [row for row in recorder.decoded() if row["type"] == "response.output_item.added"]
    assert [event["output_index"] for event in added] == [1, 2, 3, 4]
    aborted_ids = [event["item"]["id"] for event in added]

    sink.abort()

    assert output.items == [earlier]
    assert [output.index_of(item_id) for item_id in aborted_ids] == [None] * 4
    assert output.index_of("msg_earlier") == 0
    assert output.add({"id": "msg_retry"}) == 1
