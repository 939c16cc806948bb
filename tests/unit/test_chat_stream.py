"""``ChatStreamAccumulator``: chunks in, deltas forwarded as they arrive, the turn at the end."""

from __future__ import annotations

import re
from typing import Any

import pytest

from stepline._chat.stream import AssistantTurn, ChatStreamAccumulator, ToolCall
from stepline.errors import UpstreamError

Call = tuple[Any, ...]


class RecordingSink:
    """A DeltaSink that writes down every call it gets, in order."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def on_reasoning(self, text: str) -> None:
        self.calls.append(("reasoning", text))

    def on_text(self, text: str) -> None:
        self.calls.append(("text", text))

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self.calls.append(("tool_call", index, call_id, name))

    def on_tool_arguments(self, index: int, text: str) -> None:
        self.calls.append(("tool_arguments", index, text))

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        self.calls.append(("logprobs", entries))


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Chat Completions stream chunk, as the upstream client decodes it."""
    data: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        data["usage"] = usage
    return data


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def tool_piece(
    index: int,
    *,
    call_id: str | None = None,
    name: str | None = None,
    arguments: str | None = None,
) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": {}}
    if call_id is not None:
        piece["id"] = call_id
        piece["type"] = "function"
    if name is not None:
        piece["function"]["name"] = name
    if arguments is not None:
        piece["function"]["arguments"] = arguments
    return piece


ZERO_USAGE = {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0}


def test_text_pieces_are_forwarded_one_by_one_as_they_arrive() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    seen: list[list[Call]] = []
    for piece in [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}]:
        accumulator.feed(chunk(piece))
        seen.append(list(sink.calls))
    accumulator.feed(chunk({"content": ", world"}, finish_reason="stop"))
    seen.append(list(sink.calls))
    assert seen == [
        [],
        [("text", "Hel")],
        [("text", "Hel"), ("text", "lo")],
        [("text", "Hel"), ("text", "lo"), ("text", ", world")],
    ]
    assert accumulator.result() == AssistantTurn(
        text="Hello, world",
        reasoning="",
        tool_calls=(),
        finish_reason="stop",
        usage=ZERO_USAGE,
    )


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_is_forwarded_from_either_field(key: str) -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    deltas: list[dict[str, Any]] = [
        {key: "Let me"},
        {key: " think."},
        {key: None, "content": "Yes."},
    ]
    for delta in deltas:
        accumulator.feed(chunk(delta))
    accumulator.feed(chunk({}, finish_reason="stop"))
    assert sink.calls == [("reasoning", "Let me"), ("reasoning", " think."), ("text", "Yes.")]
    turn = accumulator.result()
    assert (turn.reasoning, turn.text) == ("Let me think.", "Yes.")


def test_two_parallel_tool_calls_interleaved_by_index() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    pieces = [
        tool_piece(0, call_id="call_weather", name="weather", arguments=""),
        tool_piece(1, call_id="call_time", name="time"),
        tool_piece(0, arguments='{"ci'),
        tool_piece(1, arguments='{"tz"'),
        tool_piece(0, arguments='ty": "Paris"}'),
        tool_piece(1, arguments=': "CET"}'),
    ]
    for piece in pieces:
        accumulator.feed(chunk({"tool_calls": [piece]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    assert sink.calls == [
        ("tool_call", 0, "call_weather", "weather"),
        ("tool_call", 1, "call_time", "time"),
        ("tool_arguments", 0, '{"ci'),
        ("tool_arguments", 1, '{"tz"'),
        ("tool_arguments", 0, 'ty": "Paris"}'),
        ("tool_arguments", 1, ': "CET"}'),
    ]
    assert accumulator.result().tool_calls == (
        ToolCall(call_id="call_weather", name="weather", arguments='{"city": "Paris"}'),
        ToolCall(call_id="call_time", name="time", arguments='{"tz": "CET"}'),
    )


def test_tool_call_named_after_some_argument_pieces() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    pieces = [
        tool_piece(0, call_id="call_late", arguments='{"q":'),
        tool_piece(0, arguments=' "ca'),
        tool_piece(0, name="search", arguments='ts"'),
        tool_piece(0, arguments="}"),
    ]
    progress: list[list[Call]] = []
    for piece in pieces:
        accumulator.feed(chunk({"tool_calls": [piece]}))
        progress.append(list(sink.calls))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    assert progress == [
        [],
        [],
        [
            ("tool_call", 0, "call_late", "search"),
            ("tool_arguments", 0, '{"q": "ca'),
            ("tool_arguments", 0, 'ts"'),
        ],
        [
            ("tool_call", 0, "call_late", "search"),
            ("tool_arguments", 0, '{"q": "ca'),
            ("tool_arguments", 0, 'ts"'),
            ("tool_arguments", 0, "}"),
        ],
    ]
    assert accumulator.result().tool_calls == (
        ToolCall(call_id="call_late", name="search", arguments='{"q": "cats"}'),
    )


def test_name_repeated_in_later_pieces_is_announced_once() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, call_id="call_a", name="f")]}))
    accumulator.feed(
        chunk({"tool_calls": [tool_piece(0, call_id="call_a", name="f", arguments="{}")]})
    )
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    assert sink.calls == [("tool_call", 0, "call_a", "f"), ("tool_arguments", 0, "{}")]
    assert accumulator.result().tool_calls == (
        ToolCall(call_id="call_a", name="f", arguments="{}"),
    )


def test_later_pieces_with_another_id_do_not_change_the_announced_call_id() -> None:
    # some upstreams repeat an id in every piece, and not always the same one
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    pieces = [
        tool_piece(0, call_id="call_first", name="weather"),
        tool_piece(0, call_id="call_second", arguments='{"city":'),
        tool_piece(0, call_id="call_third", arguments=' "Oslo"}'),
    ]
    for piece in pieces:
        accumulator.feed(chunk({"tool_calls": [piece]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    assert sink.calls == [
        ("tool_call", 0, "call_first", "weather"),
        ("tool_arguments", 0, '{"city":'),
        ("tool_arguments", 0, ' "Oslo"}'),
    ]
    assert accumulator.result().tool_calls == (
        ToolCall(call_id="call_first", name="weather", arguments='{"city": "Oslo"}'),
    )


def test_id_arriving_after_the_name_does_not_change_the_announced_call_id() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, name="weather")]}))
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, call_id="call_late", arguments="{}")]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    [(_, _, announced, _), _] = sink.calls
    assert [call.call_id for call in accumulator.result().tool_calls] == [announced]


def test_tool_call_without_an_id_gets_one_that_the_sink_and_the_turn_share() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, name="f", arguments="{}")]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    [(kind, index, call_id, name), arguments] = sink.calls
    assert (kind, index, name, arguments) == ("tool_call", 0, "f", ("tool_arguments", 0, "{}"))
    assert re.fullmatch(r"call_[0-9a-f]{24}", call_id)
    assert accumulator.result().tool_calls == (ToolCall(call_id=call_id, name="f", arguments="{}"),)


def test_several_calls_in_one_chunk_without_index_are_keyed_by_position() -> None:
    sink = RecordingSink()
    accumulator = ChatStreamAccumulator(sink)
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "b", "arguments": "[]"}},
    ]
    accumulator.feed(chunk({"tool_calls": calls}, finish_reason="tool_calls"))
    assert sink.calls == [
        ("tool_call", 0, "call_a", "a"),
        ("tool_arguments", 0, "{}"),
        ("tool_call", 1, "call_b", "b"),
        ("tool_arguments", 1, "[]"),
    ]
    assert accumulator.result().tool_calls == (
        ToolCall(call_id="call_a", name="a", arguments="{}"),
        ToolCall(call_id="call_b", name="b", arguments="[]"),
    )


def test_tool_calls_in_the_turn_are_ordered_by_index() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"tool_calls": [tool_piece(1, call_id="call_b", name="b")]}))
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, call_id="call_a", name="a")]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    assert [call.call_id for call in accumulator.result().tool_calls] == ["call_a", "call_b"]


def test_usage_is_mapped_to_responses_names() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"content": "hi"}, finish_reason="stop"))
    accumulator.feed(
        usage_chunk(
            {
                "prompt_tokens": 120,
                "completion_tokens": 45,
                "total_tokens": 165,
                "prompt_tokens_details": {"cached_tokens": 100},
                "completion_tokens_details": {"reasoning_tokens": 30},
            }
        )
    )
    assert accumulator.result().usage == {
        "input_tokens": 120,
        "output_tokens": 45,
        "cached_tokens": 100,
        "reasoning_tokens": 30,
    }


def test_usage_with_null_details_counts_zero() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(
        chunk(
            {"content": "hi"},
            finish_reason="stop",
            usage={
                "prompt_tokens": 3,
                "completion_tokens": 1,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
        )
    )
    assert accumulator.result().usage == {
        "input_tokens": 3,
        "output_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }


def test_result_without_finish_reason_is_an_upstream_error() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"content": "cut off"}))
    with pytest.raises(UpstreamError, match="finish_reason"):
        accumulator.result()


def test_tool_call_that_never_got_a_name_is_an_upstream_error() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"tool_calls": [tool_piece(0, call_id="call_a", arguments="{}")]}))
    accumulator.feed(chunk({}, finish_reason="tool_calls"))
    with pytest.raises(UpstreamError, match="without a name"):
        accumulator.result()


def test_final_message_of_a_text_turn() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"reasoning_content": "hmm", "content": "Hi."}, finish_reason="stop"))
    assert accumulator.result().message() == {"role": "assistant", "content": "Hi."}


def test_final_message_of_a_tool_turn() -> None:
    accumulator = ChatStreamAccumulator(RecordingSink())
    accumulator.feed(chunk({"content": "Checking."}))
    accumulator.feed(
        chunk(
            {
                "tool_calls": [
                    tool_piece(0, call_id="call_a", name="weather", arguments='{"city": "Oslo"}'),
                    tool_piece(1, call_id="call_b", name="time", arguments="{}"),
                ]
            },
            finish_reason="tool_calls",
        )
    )
    assert accumulator.result().message() == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }


def test_final_message_without_text_has_null_content() -> None:
    turn = AssistantTurn(
        text="",
        reasoning="",
        tool_calls=(ToolCall(call_id="call_a", name="f", arguments="{}"),),
        finish_reason="tool_calls",
        usage=ZERO_USAGE,
    )
    assert turn.message() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
