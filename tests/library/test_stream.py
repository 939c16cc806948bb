"""A run's event stream, ``collect``, ``run`` and taps: one run, three views that agree."""

from __future__ import annotations

from typing import Any

import pytest

import stepline.agent
from stepline.agent import Agent, RunEvent, ToolCallStarted, collect, tool
from tests.library._support import call, model_of, scripted, shapes, turn

WEATHER = {"Paris": "sunny", "Oslo": "snowy"}


@tool
async def weather(city: str) -> str:
    """Today's weather in a city."""
    return WEATHER[city]


def weather_turns() -> list[Any]:
    return [
        turn(
            "Let me check.",
            call("weather", city="Paris"),
            call("weather", city="Oslo"),
            usage=(10, 5),
        ),
        turn("Paris is sunny, Oslo snowy.", usage=(30, 8)),
    ]


def model_step(step: str, words: list[str], usage: tuple[int, int]) -> list[Any]:
    return [
        ("step_started", {"step_id": step, "kind": "model_call", "scope": None, "attempt": 1}),
        *[("text_delta", {"step_id": step, "scope": None, "text": word}) for word in words],
        (
            "usage_delta",
            {"step_id": step, "scope": None, "input_tokens": usage[0], "output_tokens": usage[1]},
        ),
        (
            "step_completed",
            {"step_id": step, "kind": "model_call", "scope": None, "state": "completed"},
        ),
    ]


def tool_started(step: str, call_id: str, city: str) -> list[Any]:
    return [
        ("step_started", {"step_id": step, "kind": "tool_call", "scope": None, "attempt": 1}),
        (
            "tool_call_started",
            {
                "step_id": step,
                "scope": None,
                "call_id": call_id,
                "name": "weather",
                "arguments": f'{{"city":"{city}"}}',
            },
        ),
    ]


def tool_finished(step: str, call_id: str, output: str) -> list[Any]:
    return [
        (
            "tool_call_finished",
            {
                "step_id": step,
                "scope": None,
                "call_id": call_id,
                "name": "weather",
                "output": output,
                "error": None,
            },
        ),
        (
            "step_completed",
            {"step_id": step, "kind": "tool_call", "scope": None, "state": "completed"},
        ),
    ]


EXPECTED_MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Weather in Paris and Oslo?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_0_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_0_0", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_0_1", "content": "snowy"},
    {"role": "assistant", "content": "Paris is sunny, Oslo snowy."},
]


async def test_stream_yields_the_whole_run_in_order() -> None:
    model = scripted(weather=weather_turns())
    agent = Agent(model=model_of(model, "weather"), instructions="Answer briefly.", tools=[weather])

    events = [event async for event in agent.stream("Weather in Paris and Oslo?")]

    assert shapes(events) == [
        ("run_started", {"response_id": "<run>", "resumed": False}),
        *model_step("step-1", ["Let", " me", " check."], (10, 5)),
        # the two calls run side by side: both start before either finishes
        *tool_started("step-2", "call_0_0", "Paris"),
        *tool_started("step-3", "call_0_1", "Oslo"),
        *tool_finished("step-2", "call_0_0", "sunny"),
        *tool_finished("step-3", "call_0_1", "snowy"),
        *model_step("step-4", ["Paris", " is", " sunny,", " Oslo", " snowy."], (30, 8)),
        (
            "run_completed",
            {
                "status": "completed",
                "stop_reason": "until_no_tool_calls",
                "response": {
                    "status": "completed",
                    "usage": {
                        "input_tokens": 40,
                        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                        "output_tokens": 13,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 53,
                    },
                },
                "messages": EXPECTED_MESSAGES,
                "steps": 4,
                "tool_invocations": 2,
            },
        ),
    ]


async def test_collect_of_a_stream_is_what_run_returns() -> None:
    model = scripted(weather=weather_turns())
    agent = Agent(model=model_of(model, "weather"), instructions="Answer briefly.", tools=[weather])

    streamed = await collect(agent.stream("Weather in Paris and Oslo?"))
    ran = await agent.run("Weather in Paris and Oslo?")

    for result in (streamed, ran):
        assert result.text == "Paris is sunny, Oslo snowy."
        assert result.messages == EXPECTED_MESSAGES
        assert result.steps == 4
        assert result.stop_reason == "until_no_tool_calls"
        assert result.status == "completed"
        assert result.error is None
        assert result.usage == stepline.agent.Usage(
            prompt_tokens=40, completion_tokens=13, tool_invocations=2
        )
    # two separate runs
    assert streamed.response_id != ran.response_id


async def test_a_tap_sees_exactly_what_the_stream_yields() -> None:
    tapped: list[RunEvent] = []
    model = scripted(weather=weather_turns())
    agent = Agent(model=model_of(model, "weather"), tools=[weather], taps=[tapped.append])

    streamed = [event async for event in agent.stream("Weather in Paris and Oslo?")]

    assert tapped == streamed
    assert streamed[-1].type == "run_completed"


async def test_taps_see_a_run_inline_and_all_taps_see_it_all() -> None:
    first: list[RunEvent] = []
    second: list[RunEvent] = []
    last_seen_by_tool: list[RunEvent] = []

    @tool
    async def remember(note: str) -> str:
        """Keep a note."""
        # the tap already saw this call start: taps run inline, not later
        last_seen_by_tool.append(first[-1])
        return "kept"

    model = scripted(notes=[turn(None, call("remember", note="milk")), turn("Noted.")])
    agent = Agent(
        model=model_of(model, "notes"), tools=[remember], taps=[first.append, second.append]
    )

    result = await agent.run("Remember milk.")

    assert result.text == "Noted."
    assert first == second
    assert [event.type for event in first] == [
        "run_started",
        "step_started",
        "usage_delta",
        "step_completed",
        "step_started",
        "tool_call_started",
        "tool_call_finished",
        "step_completed",
        "step_started",
        "text_delta",
        "usage_delta",
        "step_completed",
        "run_completed",
    ]
    (seen,) = last_seen_by_tool
    assert isinstance(seen, ToolCallStarted)
    assert (seen.name, seen.arguments) == ("remember", '{"note":"milk"}')


@pytest.mark.parametrize(
    "breaks_on", ["step_started", "text_delta", "tool_call_started", "run_completed"]
)
async def test_a_tap_that_raises_cannot_change_the_run(breaks_on: str) -> None:
    def broken(event: RunEvent) -> None:
        if event.type == breaks_on:
            raise RuntimeError("the tap broke")

    seen: list[RunEvent] = []
    clean = Agent(model=model_of(scripted(weather=weather_turns()), "weather"), tools=[weather])
    tapped = Agent(
        model=model_of(scripted(weather=weather_turns()), "weather"),
        tools=[weather],
        taps=[broken, seen.append],
    )

    expected = [event async for event in clean.stream("Weather in Paris and Oslo?")]
    streamed = [event async for event in tapped.stream("Weather in Paris and Oslo?")]

    assert shapes(streamed) == shapes(expected)
    assert seen == streamed


def test_the_public_names_of_stepline_agent() -> None:
    assert stepline.agent.__all__ == [
        "Agent",
        "AgentTool",
        "ChatModel",
        "FunctionTool",
        "HttpTool",
        "RunCompleted",
        "RunEvent",
        "RunFailed",
        "RunResult",
        "RunStarted",
        "RunState",
        "StepCompleted",
        "StepStarted",
        "StopPolicy",
        "TextDelta",
        "ToolCallFinished",
        "ToolCallStarted",
        "Usage",
        "UsageDelta",
        "any_of",
        "budget",
        "collect",
        "max_steps",
        "tool",
        "until_no_tool_calls",
        "until_tool_called",
    ]
    for name in stepline.agent.__all__:
        assert getattr(stepline.agent, name) is not None
