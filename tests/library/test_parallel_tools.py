"""Fan-outs of tool calls: the concurrency limit, the join policies, and call order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepline.agent import Agent, RunEvent, ToolCallFinished, tool
from tests.library._support import Gauge, call, model_of, run_alongside, scripted, shapes, turn

FAN_OUT = 6


def fan_out_agent(gauge: Gauge, **options: Any) -> tuple[Agent, list[int]]:
    done: list[int] = []

    @tool
    async def work(n: int) -> str:
        """Do one piece of work."""
        await gauge.hold()
        done.append(n)
        return f"done {n}"

    model = scripted(
        fan=[
            turn(None, *[call("work", n=n) for n in range(FAN_OUT)]),
            turn("All done."),
        ]
    )
    return Agent(model=model_of(model, "fan"), tools=[work], **options), done


@pytest.mark.parametrize(
    ("options", "width"),
    [
        ({"tool_concurrency": 2}, 2),
        ({"parallel_tools": False}, 1),
        ({"parallel_tools": False, "tool_concurrency": 4}, 1),
        ({}, FAN_OUT),
    ],
    ids=["tool_concurrency=2", "parallel_tools=False", "sequential-wins", "default"],
)
async def test_a_fan_out_runs_at_most_the_limit_at_once(
    options: dict[str, Any], width: int
) -> None:
    gauge = Gauge()
    agent, done = fan_out_agent(gauge, **options)

    result = await run_alongside(agent.run("Do six things."), lambda: gauge.drive(FAN_OUT, width))

    assert result.text == "All done."
    assert sorted(done) == list(range(FAN_OUT))
    assert gauge.peak == width


def tool_message_contents(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["tool_call_id"], m["content"]) for m in messages if m["role"] == "tool"]


async def test_fail_fast_cancels_a_slow_sibling_and_fails_with_the_error() -> None:
    slow_entered = asyncio.Event()
    never = asyncio.Event()
    slow_log: list[str] = []

    @tool
    async def slow(n: int) -> str:
        """Take forever."""
        slow_log.append("entered")
        slow_entered.set()
        try:
            await never.wait()
            slow_log.append("completed")
        finally:
            slow_log.append("exited")
        return "slow result"

    @tool
    async def broken(n: int) -> str:
        """Fail once the slow tool is under way."""
        await slow_entered.wait()
        raise ValueError("disk on fire")

    model = scripted(
        fan=[turn(None, call("slow", n=1), call("broken", n=2), usage=(4, 3)), turn("unreachable")]
    )
    events: list[RunEvent] = []
    agent = Agent(
        model=model_of(model, "fan"), tools=[slow, broken], join="fail_fast", taps=[events.append]
    )

    result = await agent.run("Go.")

    error = "tool 'broken' failed: tool 'broken' raised ValueError: disk on fire"
    assert (result.status, result.stop_reason, result.error) == ("failed", "error", error)
    # cancelled mid-body and drained before the run returned
    assert slow_log == ["entered", "exited"]
    assert len(model.requests("fan")) == 1
    assert shapes(events) == [
        ("run_started", {"response_id": "<run>", "resumed": False}),
        ("step_started", {"step_id": "step-1", "kind": "model_call", "scope": None, "attempt": 1}),
        (
            "usage_delta",
            {"step_id": "step-1", "scope": None, "input_tokens": 4, "output_tokens": 3},
        ),
        (
            "step_completed",
            {"step_id": "step-1", "kind": "model_call", "scope": None, "state": "completed"},
        ),
        ("step_started", {"step_id": "step-2", "kind": "tool_call", "scope": None, "attempt": 1}),
        (
            "tool_call_started",
            {
                "step_id": "step-2",
                "scope": None,
                "call_id": "call_0_0",
                "name": "slow",
                "arguments": '{"n":1}',
            },
        ),
        ("step_started", {"step_id": "step-3", "kind": "tool_call", "scope": None, "attempt": 1}),
        (
            "tool_call_started",
            {
                "step_id": "step-3",
                "scope": None,
                "call_id": "call_0_1",
                "name": "broken",
                "arguments": '{"n":2}',
            },
        ),
        (
            "tool_call_finished",
            {
                "step_id": "step-3",
                "scope": None,
                "call_id": "call_0_1",
                "name": "broken",
                "output": None,
                "error": "tool 'broken' raised ValueError: disk on fire",
            },
        ),
        (
            "step_completed",
            {"step_id": "step-3", "kind": "tool_call", "scope": None, "state": "failed"},
        ),
        (
            "tool_call_finished",
            {
                "step_id": "step-2",
                "scope": None,
                "call_id": "call_0_0",
                "name": "slow",
                "output": None,
                "error": "tool call cancelled: a sibling call failed",
            },
        ),
        (
            "step_completed",
            {"step_id": "step-2", "kind": "tool_call", "scope": None, "state": "cancelled"},
        ),
        ("error", {"message": error, "code": "server_error"}),
        (
            "run_completed",
            {
                "status": "failed",
                "stop_reason": "error",
                "response": {
                    "status": "failed",
                    "usage": {
                        "input_tokens": 4,
                        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                        "output_tokens": 3,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 7,
                    },
                },
                "messages": [
                    {"role": "user", "content": "Go."},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_0_0",
                                "type": "function",
                                "function": {"name": "slow", "arguments": '{"n":1}'},
                            },
                            {
                                "id": "call_0_1",
                                "type": "function",
                                "function": {"name": "broken", "arguments": '{"n":2}'},
                            },
                        ],
                    },
                    {
                        "role": "tool",
                        "tool_call_id": "call_0_0",
                        "content": "Error: tool call cancelled: a sibling call failed",
                    },
                    {
                        "role": "tool",
                        "tool_call_id": "call_0_1",
                        "content": "Error: tool 'broken' raised ValueError: disk on fire",
                    },
                ],
                "steps": 3,
                "tool_invocations": 2,
            },
        ),
    ]


async def test_join_all_waits_for_every_call_and_reports_each_failure() -> None:
    failures = 0
    both_failed = asyncio.Event()
    finished: list[str] = []

    def failed_one() -> None:
        nonlocal failures
        failures += 1
        if failures == 2:
            both_failed.set()

    @tool
    async def fetch(url: str) -> str:
        """Fetch a page; finishes only after both failures."""
        await both_failed.wait()
        finished.append(url)
        return f"page {url}"

    @tool
    async def parse(text: str) -> str:
        """Parse a text."""
        failed_one()
        raise ValueError(f"cannot parse {text!r}")

    @tool
    async def upload(path: str) -> str:
        """Upload a file."""
        failed_one()
        raise PermissionError(f"{path} is read-only")

    model = scripted(
        fan=[
            turn(
                None,
                call("fetch", url="a"),
                call("parse", text="x"),
                call("fetch", url="b"),
                call("upload", path="/srv"),
            ),
            turn("unreachable"),
        ]
    )
    agent = Agent(
        model=model_of(model, "fan"),
        tools=[fetch, parse, upload],
        join="all",
        tool_errors="fail",
    )

    result = await agent.run("Go.")

    assert (result.status, result.stop_reason) == ("failed", "error")
    assert result.error == (
        "2 tool calls failed: "
        "tool 'parse' failed: tool 'parse' raised ValueError: cannot parse 'x'; "
        "tool 'upload' failed: tool 'upload' raised PermissionError: /srv is read-only"
    )
    assert sorted(finished) == ["a", "b"]
    outputs = tool_message_contents(result.messages)
    assert [entry for entry in outputs if not entry[1].startswith("Error:")] == [
        ("call_0_0", "page a"),
        ("call_0_2", "page b"),
    ]
    assert [call_id for call_id, _ in outputs] == ["call_0_0", "call_0_1", "call_0_2", "call_0_3"]
    assert len(model.requests("fan")) == 1


async def test_outputs_keep_call_order_when_the_first_call_finishes_last() -> None:
    fast_finished = asyncio.Event()

    def watch(event: RunEvent) -> None:
        if isinstance(event, ToolCallFinished) and event.name == "fast":
            fast_finished.set()

    @tool
    async def slow(n: int) -> str:
        """Finishes only after the fast tool has."""
        await fast_finished.wait()
        return f"slow {n}"

    @tool
    async def fast(n: int) -> str:
        """Finishes at once."""
        return f"fast {n}"

    events: list[RunEvent] = []
    model = scripted(
        order=[
            turn(None, call("slow", n=1), call("fast", n=2), call("fast", n=3)),
            turn("Done."),
        ]
    )
    agent = Agent(model=model_of(model, "order"), tools=[slow, fast], taps=[watch, events.append])

    result = await agent.run("Go.")

    finished = [e.call_id for e in events if isinstance(e, ToolCallFinished)]
    assert finished[-1] == "call_0_0"
    in_call_order = [("call_0_0", "slow 1"), ("call_0_1", "fast 2"), ("call_0_2", "fast 3")]
    assert tool_message_contents(result.messages) == in_call_order
    follow_up = model.requests("order")[1]["messages"]
    assert tool_message_contents(follow_up) == in_call_order
