"""The script format: parsing, validation errors, round trips, and the public surface."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import stepline.scripted
from stepline.errors import InvalidRequest
from stepline.scripted import (
    Fault,
    Script,
    ScriptedCustomToolCall,
    ScriptedToolCall,
    ScriptedUsage,
    Turn,
)


def test_public_surface_is_pinned() -> None:
    assert stepline.scripted.__all__ == [
        "Fault",
        "Script",
        "ScriptedCustomToolCall",
        "ScriptedModel",
        "ScriptedToolCall",
        "ScriptedUsage",
        "Turn",
        "create_scripted_app",
        "demo_reply",
        "serve_app",
    ]
    for name in stepline.scripted.__all__:
        assert getattr(stepline.scripted, name) is not None


def test_from_dict_builds_every_field() -> None:
    script = Script.from_dict(
        {
            "repeat_last": True,
            "turns": [
                {
                    "reasoning": "think",
                    "content": "hello",
                    "tool_calls": [
                        {"name": "get_weather", "arguments": {"city": "Paris"}},
                        {"name": "broken", "arguments": '{"city": "Par', "id": "call_x"},
                        {"kind": "custom", "name": "apply_patch", "input": "*** Begin\n+x"},
                        {"kind": "custom", "name": "note", "input": "", "id": "call_n"},
                        {"kind": "function", "name": "explicit"},
                    ],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                    "finish_reason": "length",
                    "delay": 1,
                    "token_delay": 0.5,
                    "chunk_size": 3,
                    "fault": {"status": 429, "message": "slow", "retry_after": 2, "times": 1},
                },
                {"fault": {"stall_after": 2, "stall": 0.5, "drop_after": 4}},
            ],
        }
    )
    assert script == Script(
        repeat_last=True,
        turns=(
            Turn(
                reasoning="think",
                content="hello",
                tool_calls=(
                    ScriptedToolCall(name="get_weather", arguments={"city": "Paris"}),
                    ScriptedToolCall(name="broken", arguments='{"city": "Par', id="call_x"),
                    ScriptedCustomToolCall(name="apply_patch", input="*** Begin\n+x"),
                    ScriptedCustomToolCall(name="note", input="", id="call_n"),
                    ScriptedToolCall(name="explicit"),
                ),
                usage=ScriptedUsage(prompt_tokens=7, completion_tokens=3),
                finish_reason="length",
                delay=1.0,
                token_delay=0.5,
                chunk_size=3,
                fault=Fault(status=429, message="slow", retry_after=2.0, times=1),
            ),
            Turn(fault=Fault(stall_after=2, stall=0.5, drop_after=4)),
        ),
    )


def test_arguments_are_streamed_as_given() -> None:
    assert ScriptedToolCall(name="t", arguments={"a": 1}).arguments_json == '{"a":1}'
    assert ScriptedToolCall(name="t", arguments='{"a": ').arguments_json == '{"a": '
    assert ScriptedToolCall(name="t").arguments_json == "{}"


def test_round_trip_through_json() -> None:
    script = Script(
        turns=(
            Turn(
                content="hi",
                tool_calls=(
                    ScriptedToolCall(name="t", arguments={"x": [1, 2]}),
                    ScriptedCustomToolCall(name="c", input="free {text", id="call_c"),
                ),
                usage=ScriptedUsage(prompt_tokens=1, completion_tokens=2),
                fault=Fault(garbage=True, times=2),
            ),
            Turn(reasoning="r", finish_reason="stop"),
        ),
        repeat_last=True,
    )
    assert Script.from_json(orjson.dumps(script.to_dict())) == script
    assert "fault" not in script.to_dict()["turns"][1]
    assert script.to_dict()["turns"][0]["tool_calls"] == [
        {"name": "t", "arguments": {"x": [1, 2]}, "kind": "function"},
        {"name": "c", "input": "free {text", "id": "call_c", "kind": "custom"},
    ]


def test_turn_picks_by_index_and_repeats_last_only_when_asked() -> None:
    first, last = Turn(content="a"), Turn(content="b")
    assert Script(turns=(first, last)).turn(1) is last
    assert Script(turns=(first, last)).turn(2) is None
    assert Script(turns=(first, last), repeat_last=True).turn(5) is last


@pytest.mark.parametrize(
    ("data", "message", "param"),
    [
        ([1], "a script must be a JSON object with a 'turns' list", None),
        ({"turns": []}, "turns: List should have at least 1 item", "turns"),
        ({"turns": [1]}, "turns.0: should be a JSON object", "turns.0"),
        ({"turns": [{"contnt": "x"}]}, "turns.0.contnt: Extra inputs are not permitted", None),
        ({"turns": [{"delay": "1"}]}, "turns.0.delay: Input should be a valid number", None),
        ({"turns": [{"delay": -1}]}, "turns.0.delay: Input should be greater than", None),
        ({"turns": [{"chunk_size": 0}]}, "turns.0.chunk_size: Input should be greater", None),
        ({"turns": [{"finish_reason": "done"}]}, "turns.0.finish_reason: Input should be", None),
        (
            {"turns": [{"tool_calls": [{"name": "t", "arguments": 3}]}]},
            "turns.0.tool_calls.0.arguments: arguments must be a JSON object or a string",
            "turns.0.tool_calls.0.arguments",
        ),
        ({"turns": [{"tool_calls": [{"arguments": {}}]}]}, "name: Field required", None),
        (
            {"turns": [{"tool_calls": [{"kind": "custom", "name": "c"}]}]},
            "turns.0.tool_calls.0: a custom tool call needs input (a string)",
            "turns.0.tool_calls.0",
        ),
        (
            {
                "turns": [
                    {"tool_calls": [{"kind": "custom", "name": "c", "input": "", "arguments": {}}]}
                ]
            },
            "a custom tool call takes input, not arguments",
            "turns.0.tool_calls.0",
        ),
        (
            {"turns": [{"tool_calls": [{"name": "f", "input": "x"}]}]},
            'input is for custom tool calls ("kind": "custom")',
            "turns.0.tool_calls.0",
        ),
        (
            {"turns": [{"tool_calls": [{"kind": "custom", "name": "c", "input": {"a": 1}}]}]},
            "turns.0.tool_calls.0.input: Input should be a valid string",
            "turns.0.tool_calls.0.input",
        ),
        (
            {"turns": [{"tool_calls": [{"kind": "freeform", "name": "c"}]}]},
            "turns.0.tool_calls.0.kind: Input should be 'function' or 'custom'",
            "turns.0.tool_calls.0.kind",
        ),
        ({"turns": [{"fault": {}}]}, "turns.0.fault: a fault needs status", "turns.0.fault"),
        ({"turns": [{"fault": {"status": 200}}]}, "greater than or equal to 400", None),
        ({"turns": [{"fault": {"status": 500, "garbage": True}}]}, "cannot be combined", None),
        ({"turns": [{"fault": {"no_finish": True, "retry_after": 1}}]}, "needs a status", None),
        ({"turns": [{"fault": {"stall_after": 1}}]}, "stall_after and a positive stall", None),
        ({"turns": [{"fault": {"status": 500, "times": 0}}]}, "times: Input should be", None),
    ],
)
def test_invalid_scripts_name_the_field(data: Any, message: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Script.from_dict(data)
    assert message in caught.value.message
    if param is not None:
        assert caught.value.param == param


def test_from_json_rejects_broken_json() -> None:
    with pytest.raises(InvalidRequest, match="a script must be valid JSON"):
        Script.from_json("{turns")


def test_python_built_turns_are_checked_too() -> None:
    with pytest.raises(InvalidRequest, match="chunk_size"):
        Turn(chunk_size=0)
    with pytest.raises(InvalidRequest, match="negative"):
        Turn(token_delay=-0.1)
    with pytest.raises(InvalidRequest, match="at least one turn"):
        Script(turns=())
