"""Client tool calls of every kind, reasoning options, logprobs and hosted calls as events.

Each test compares the whole event list of one model call, and checks every
event and item against the openai SDK's own types.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from openai.types.responses import ResponseOutputItem, ResponseStreamEvent
from pydantic import TypeAdapter

from stepline._chat.stream import ChatStreamAccumulator
from stepline._engine.sinks import CLIENT, SERVER, ToolView
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.events import OutputList, ResponseEvents
from stepline._protocol.model_events import ItemOptions, ModelCallEvents, PriorEmission
from stepline._protocol.request import parse_request
from stepline._protocol.sealing import Sealer
from stepline._protocol.server_items import mcp_call_id
from stepline.store._base import EventRow

STREAM_EVENT = TypeAdapter[Any](ResponseStreamEvent)
OUTPUT_ITEM = TypeAdapter[Any](ResponseOutputItem)
_RANDOM_ID = re.compile(r"(rs|msg|fc|ctc|sh|apc|lsh|cu|tsc)_[0-9a-f]{32}")

TOOLS = [
    {"type": "function", "name": "lookup"},
    {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "spawn"}]},
]


def tools_of(*, native: bool = False) -> ClientTools:
    request = parse_request({"model": "m", "input": "hi", "tools": TOOLS[:2] + TOOLS[4:]})
    return ClientTools.of(request, native_custom=native)


def builtin_tools() -> ClientTools:
    return ClientTools.of(parse_request({"model": "m", "input": "hi", "tools": TOOLS[2:4]}))


def normalise(value: Any, names: dict[str, str] | None = None) -> Any:
    names = {} if names is None else names
    if isinstance(value, dict):
        return {key: normalise(inner, names) for key, inner in value.items()}
    if isinstance(value, list):
        return [normalise(inner, names) for inner in value]
    if isinstance(value, str) and _RANDOM_ID.fullmatch(value):
        if value not in names:
            prefix = value.split("_", 1)[0]
            count = sum(1 for name in names.values() if name.startswith(f"<{prefix}#"))
            names[value] = f"<{prefix}#{count + 1}>"
        return names[value]
    return value


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}]}


def call(index: int, arguments: str, *, call_id: str = "", name: str = "") -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        piece["id"] = call_id
    if name:
        piece["function"]["name"] = name
    return {"tool_calls": [piece]}


def run(
    deltas: list[dict[str, Any]],
    describe: Any,
    *,
    client_tools: ClientTools | None = None,
    options: ItemOptions | None = None,
    rows: list[EventRow] | None = None,
    prior: PriorEmission | None = None,
    openai_types: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [] if rows is None else rows
    first = len(rows)
    events = ResponseEvents("resp_1", rows.append, next_seq=len(rows))
    sink = ModelCallEvents(
        events,
        OutputList(),
        step_id="step_1",
        describe=describe,
        client_tools=client_tools,
        options=options or ItemOptions(),
        prior=prior,
    )
    accumulator = ChatStreamAccumulator(sink)
    for delta in deltas:
        accumulator.feed(delta if "choices" in delta else chunk(delta))
    accumulator.feed(chunk({}, finish="tool_calls"))
    items = sink.close(accumulator.result())
    sent = [orjson.loads(row.data) for row in rows[first:]]
    for event in sent:
        if openai_types:
            STREAM_EVENT.validate_python(event)
    for item in items:
        OUTPUT_ITEM.validate_python(item)
    return sent, items


def client(tools: ClientTools) -> dict[str, Any]:
    """What a model call is given for the client's tools: who runs a call, and its tool."""

    def describe(name: str) -> ToolView:
        return SERVER if tools.get(name) is None else CLIENT

    return {"describe": describe, "client_tools": tools}


def test_a_custom_tool_offered_as_a_function_streams_its_decoded_input() -> None:
    sent, items = run(
        [
            call(0, "", call_id="call_p", name="apply_patch"),
            call(0, '{"input": "*** Begin'),
            call(0, ' Patch\\n+hi \\"x\\"'),
            call(0, '\\n"}'),
        ],
        **client(tools_of()),
    )
    item = {
        "id": "<ctc#1>",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_p",
        "name": "apply_patch",
        "input": '*** Begin Patch\n+hi "x"\n',
    }
    where = {"item_id": "<ctc#1>", "output_index": 0}
    assert normalise(sent) == [
        {
            "type": "response.output_item.added",
            "sequence_number": 0,
            "output_index": 0,
            "item": {**item, "status": "in_progress", "input": ""},
        },
        {
            "type": "response.custom_tool_call_input.delta",
            "sequence_number": 1,
            **where,
            "delta": "*** Begin",
        },
        {
            "type": "response.custom_tool_call_input.delta",
            "sequence_number": 2,
            **where,
            "delta": ' Patch\n+hi "x"',
        },
        {
            "type": "response.custom_tool_call_input.delta",
            "sequence_number": 3,
            **where,
            "delta": "\n",
        },
        {
            "type": "response.custom_tool_call_input.done",
            "sequence_number": 4,
            **where,
            "input": '*** Begin Patch\n+hi "x"\n',
        },
        {
            "type": "response.output_item.done",
            "sequence_number": 5,
            "output_index": 0,
            "item": item,
        },
    ]
    assert normalise(items) == [item]


def test_a_native_custom_call_streams_its_raw_input_and_is_remembered_as_custom() -> None:
    deltas = [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_n",
                    "type": "custom",
                    "custom": {"name": "apply_patch", "input": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "custom": {"input": "raw "}}]},
        {"tool_calls": [{"index": 0, "custom": {"input": "text"}}]},
    ]
    tools = tools_of(native=True)
    rows: list[EventRow] = []
    events = ResponseEvents("resp_1", rows.append)
    sink = ModelCallEvents(events, OutputList(), step_id="s", **client(tools))
    accumulator = ChatStreamAccumulator(sink)
    for delta in deltas:
        accumulator.feed(chunk(delta))
    accumulator.feed(chunk({}, finish="tool_calls"))
    turn = accumulator.result()
    items = sink.close(turn)
    deltas_sent = [
        orjson.loads(row.data)["delta"]
        for row in rows
        if b"custom_tool_call_input.delta" in row.data
    ]
    assert deltas_sent == ["raw ", "text"]
    assert items[0]["input"] == "raw text"
    assert turn.message()["tool_calls"] == [
        {"id": "call_n", "type": "custom", "custom": {"name": "apply_patch", "input": "raw text"}}
    ]


def test_a_namespace_function_shows_its_own_name_and_namespace() -> None:
    sent, items = run(
        [call(0, '{"task": "x"}', call_id="call_s", name="agents__spawn")], **client(tools_of())
    )
    assert normalise(items) == [
        {
            "id": "<fc#1>",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_s",
            "name": "spawn",
            "arguments": '{"task": "x"}',
            "namespace": "agents",
        }
    ]
    assert [e["type"] for e in sent] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert sent[2]["name"] == "spawn"


def test_built_in_calls_are_shown_whole_in_output_order() -> None:
    tools = builtin_tools()
    sent, items = run(
        [
            call(0, '{"commands": ', call_id="call_sh", name="shell"),
            call(0, '["ls", "pwd"]}'),
            call(
                1, '{"type": "create_file", "path": "a.txt",', call_id="call_ap", name="apply_patch"
            ),
            call(1, ' "diff": "+a"}'),
        ],
        **client(tools),
    )
    shell = {
        "id": "<sh#1>",
        "type": "shell_call",
        "status": "completed",
        "call_id": "call_sh",
        "action": {"commands": ["ls", "pwd"], "timeout_ms": None, "max_output_length": None},
        "environment": None,
    }
    patch = {
        "id": "<apc#1>",
        "type": "apply_patch_call",
        "status": "completed",
        "call_id": "call_ap",
        "operation": {"type": "create_file", "path": "a.txt", "diff": "+a"},
    }
    assert normalise([[e["type"], e.get("output_index"), e.get("item")] for e in sent]) == [
        ["response.output_item.added", 0, {**shell, "status": "in_progress"}],
        ["response.output_item.done", 0, shell],
        ["response.output_item.added", 1, {**patch, "status": "in_progress"}],
        ["response.output_item.done", 1, patch],
    ]
    assert normalise(items) == [shell, patch]


def test_reasoning_with_a_summary_streams_once_as_the_summary_and_is_sealed() -> None:
    sealer = Sealer.ephemeral()
    sent, items = run(
        [{"reasoning_content": "Think"}, {"reasoning_content": "ing."}, {"content": "Done."}],
        SERVER,
        options=ItemOptions(summary=True, seal=sealer.seal),
    )
    where = {"item_id": "<rs#1>", "output_index": 0}
    assert [(e["type"], e.get("delta") or e.get("text")) for e in sent[:8]] == [
        ("response.output_item.added", None),
        ("response.reasoning_summary_part.added", None),
        ("response.content_part.added", None),
        ("response.reasoning_summary_text.delta", "Think"),
        ("response.reasoning_summary_text.delta", "ing."),
        ("response.reasoning_summary_text.done", "Thinking."),
        ("response.reasoning_summary_part.done", None),
        ("response.reasoning_text.done", "Thinking."),
    ]
    assert normalise(sent[3]) == {
        "type": "response.reasoning_summary_text.delta",
        "sequence_number": 3,
        **where,
        "summary_index": 0,
        "delta": "Think",
    }
    reasoning = items[0]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Thinking."}]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert sealer.open(reasoning["encrypted_content"]) == "Thinking."


def test_reasoning_without_options_has_no_summary_and_names_events_as_asked() -> None:
    deltas: list[dict[str, Any]] = [{"reasoning_content": "Hm."}]
    openai_names, items = run(deltas, SERVER)
    # the Open Responses names are not the openai SDK's
    open_names, _ = run(
        deltas, SERVER, options=ItemOptions(open_responses_names=True), openai_types=False
    )
    assert [e["type"] for e in openai_names if "reasoning" in e["type"]] == [
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    ]
    assert [e["type"] for e in open_names if "reasoning" in e["type"]] == [
        "response.reasoning.delta",
        "response.reasoning.done",
    ]
    assert items[0]["summary"] == []
    assert "encrypted_content" not in items[0]


def test_logprobs_ride_on_the_text_deltas_and_the_part_only_when_asked() -> None:
    entry = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    deltas = [chunk({"content": "Hi"}, logprobs={"content": [entry]})]
    with_logprobs, items = run(deltas, SERVER, options=ItemOptions(logprobs=True))
    delta = next(e for e in with_logprobs if e["type"] == "response.output_text.delta")
    assert delta["logprobs"] == [entry]
    assert items[0]["content"][0]["logprobs"] == [entry]
    without, plain = run(deltas, SERVER)
    assert next(e for e in without if e["type"] == "response.output_text.delta")["logprobs"] == []
    assert plain[0]["content"][0]["logprobs"] == []


def test_a_hosted_call_stays_open_for_its_tool_step() -> None:
    sent, items = run(
        [call(0, '{"query": "paris weather"}', call_id="call_w", name="web_search")],
        lambda name: ToolView(kind="server", hosted="web_search"),
    )
    assert items == [
        {
            "id": "ws_" + mcp_call_id("call_w", "step_1").removeprefix("mcp_"),
            "type": "web_search_call",
            "status": "in_progress",
            "action": {"type": "search", "query": "paris weather"},
        }
    ]
    assert [e["type"] for e in sent] == ["response.output_item.added"]


def test_a_rerun_continues_a_custom_call_without_repeating_input() -> None:
    rows: list[EventRow] = []
    first = [
        call(0, "", call_id="call_p", name="apply_patch"),
        call(0, '{"input": "abc'),
    ]
    events = ResponseEvents("resp_1", rows.append)
    sink = ModelCallEvents(events, OutputList(), step_id="s", **client(tools_of()))
    accumulator = ChatStreamAccumulator(sink)
    for delta in first:
        accumulator.feed(chunk(delta))
    # the process dies; the model call runs again from its start
    sent, items = run(
        [*first, call(0, 'def"}')],
        **client(tools_of()),
        rows=rows,
        prior=PriorEmission(list(rows)),
    )
    assert [(e["type"], e.get("delta")) for e in sent] == [
        ("response.custom_tool_call_input.delta", "def"),
        ("response.custom_tool_call_input.done", None),
        ("response.output_item.done", None),
    ]
    assert items[0]["input"] == "abcdef"
