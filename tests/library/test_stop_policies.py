"""Stop policies end a run where they say, and the stop reason names the one that fired."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepline.agent import (
    Agent,
    RunResult,
    RunState,
    StopPolicy,
    any_of,
    budget,
    max_steps,
    tool,
    until_tool_called,
)
from stepline.scripted import ScriptedModel
from tests.library._support import call, model_of, scripted, turn

#: each turn asks for one more lookup, then the model answers; 5 prompt and
#: 2 completion tokens a turn
LOOKUP_TURNS = [
    turn(None, call("lookup", key="a"), usage=(5, 2)),
    turn(None, call("lookup", key="b"), usage=(5, 2)),
    turn(None, call("lookup", key="c"), usage=(5, 2)),
    turn("All found.", usage=(5, 2)),
]


class Lookups:
    """A ``lookup`` tool that records the keys it was called with."""

    def __init__(self) -> None:
        self.keys: list[str] = []

        @tool
        async def lookup(key: str) -> str:
            """Look a key up."""
            self.keys.append(key)
            return key.upper()

        self.tool = lookup


async def run_lookups(
    stop: StopPolicy | list[StopPolicy] | tuple[()] = (),
) -> tuple[RunResult, Lookups, ScriptedModel]:
    lookups = Lookups()
    model = scripted(lookups=LOOKUP_TURNS)
    agent = Agent(model=model_of(model, "lookups"), tools=[lookups.tool], stop=stop)
    result = await agent.run("Find a, b and c.")
    return result, lookups, model


async def test_without_stop_policies_a_run_ends_when_the_model_calls_no_tool() -> None:
    result, lookups, model = await run_lookups()

    assert (result.status, result.stop_reason, result.text) == (
        "completed",
        "until_no_tool_calls",
        "All found.",
    )
    assert lookups.keys == ["a", "b", "c"]
    assert len(model.requests("lookups")) == 4


async def test_max_steps_stops_after_n_model_calls_before_their_tools_run() -> None:
    result, lookups, model = await run_lookups(max_steps(2))

    assert (result.status, result.stop_reason) == ("incomplete", "max_steps(2)")
    assert lookups.keys == ["a"]
    assert len(model.requests("lookups")) == 2
    assert result.steps == 3
    assert result.response["incomplete_details"] == {"reason": "max_steps(2)"}


async def test_until_tool_called_stops_before_the_model_sees_the_result() -> None:
    result, lookups, model = await run_lookups(until_tool_called("lookup"))

    assert (result.status, result.stop_reason) == ("incomplete", "until_tool_called(lookup)")
    assert lookups.keys == ["a"]
    # the follow-up model call never happens
    assert len(model.requests("lookups")) == 1
    assert result.messages[-1] == {"role": "tool", "tool_call_id": "call_0_0", "content": "A"}


async def test_until_tool_called_waits_for_the_named_tool() -> None:
    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return key

    @tool
    def answer(text: str) -> str:
        """Give the final answer."""
        return text

    model = scripted(
        answers=[
            turn(None, call("lookup", key="a")),
            turn(None, call("answer", text="42")),
            turn("unreachable"),
        ]
    )
    agent = Agent(
        model=model_of(model, "answers"), tools=[lookup, answer], stop=until_tool_called("answer")
    )

    result = await agent.run("Answer.")

    assert result.stop_reason == "until_tool_called(answer)"
    assert len(model.requests("answers")) == 2
    assert result.messages[-1] == {"role": "tool", "tool_call_id": "call_1_0", "content": "42"}


@pytest.mark.parametrize(
    ("policy", "reason", "keys", "model_calls"),
    [
        # 5 prompt tokens a call: the second call reaches 10, its tool does not run
        (budget(prompt_tokens=10), "budget(prompt_tokens=10)", ["a"], 2),
        # 2 completion tokens a call: the third call reaches 6
        (budget(completion_tokens=6), "budget(completion_tokens=6)", ["a", "b"], 3),
        # checked after each tool step: the second lookup reaches 2
        (budget(tool_invocations=2), "budget(tool_invocations=2)", ["a", "b"], 2),
    ],
    ids=["prompt_tokens", "completion_tokens", "tool_invocations"],
)
async def test_budgets_stop_once_reached(
    policy: StopPolicy, reason: str, keys: list[str], model_calls: int
) -> None:
    result, lookups, model = await run_lookups(policy)

    assert (result.status, result.stop_reason) == ("incomplete", reason)
    assert lookups.keys == keys
    assert len(model.requests("lookups")) == model_calls


async def test_a_tool_budget_is_checked_after_the_whole_fan_out() -> None:
    lookups = Lookups()
    model = scripted(
        fan=[
            turn(None, call("lookup", key="a"), call("lookup", key="b"), call("lookup", key="c")),
            turn("unreachable"),
        ]
    )
    agent = Agent(
        model=model_of(model, "fan"), tools=[lookups.tool], stop=budget(tool_invocations=2)
    )

    result = await agent.run("Find three.")

    # a stop policy never interrupts a running step: all three calls finish
    assert sorted(lookups.keys) == ["a", "b", "c"]
    assert result.stop_reason == "budget(tool_invocations=2)"
    assert result.usage.tool_invocations == 3
    assert len(model.requests("fan")) == 1


async def test_a_time_budget_lets_a_slow_step_finish_then_stops() -> None:
    finished: list[str] = []

    @tool
    async def crunch(size: int) -> str:
        """Crunch numbers, slowly."""
        await asyncio.sleep(0.6)  # simulates a slow tool, longer than the budget
        finished.append("crunch")
        return f"crunched {size}"

    model = scripted(slow=[turn(None, call("crunch", size=3)), turn("unreachable")])
    agent = Agent(model=model_of(model, "slow"), tools=[crunch], stop=budget(seconds=0.5))

    result = await agent.run("Crunch.")

    assert (result.status, result.stop_reason) == ("incomplete", "budget(seconds=0.5)")
    assert finished == ["crunch"]
    assert result.messages[-1] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": "crunched 3",
    }
    assert len(model.requests("slow")) == 1


async def test_a_user_written_policy_is_a_plain_function_of_the_run_state() -> None:
    seen: list[tuple[int, int, list[str]]] = []

    def two_lookups(state: RunState) -> str | None:
        seen.append((state.model_calls, state.tool_invocations, list(state.tools_called)))
        return "two lookups done" if state.tools_called.count("lookup") >= 2 else None

    result, lookups, model = await run_lookups(two_lookups)

    assert (result.status, result.stop_reason) == ("incomplete", "two lookups done")
    assert lookups.keys == ["a", "b"]
    assert len(model.requests("lookups")) == 2
    # checked after every step: model call, lookup, model call, lookup
    assert seen == [
        (1, 0, []),
        (1, 1, ["lookup"]),
        (2, 1, ["lookup"]),
        (2, 2, ["lookup", "lookup"]),
    ]


def composed(kind: str, *policies: StopPolicy) -> Any:
    return list(policies) if kind == "list" else any_of(*policies)


@pytest.mark.parametrize("kind", ["list", "any_of"])
async def test_the_first_policy_to_fire_wins(kind: str) -> None:
    # until_tool_called fires after the first lookup, long before max_steps(3)
    result, lookups, _ = await run_lookups(
        composed(kind, max_steps(3), until_tool_called("lookup"))
    )

    assert result.stop_reason == "until_tool_called(lookup)"
    assert lookups.keys == ["a"]


@pytest.mark.parametrize("kind", ["list", "any_of"])
async def test_policies_firing_together_are_asked_in_order(kind: str) -> None:
    first = budget(tool_invocations=1)
    second = until_tool_called("lookup")

    one, _, _ = await run_lookups(composed(kind, first, second))
    other, _, _ = await run_lookups(composed(kind, second, first))

    assert one.stop_reason == "budget(tool_invocations=1)"
    assert other.stop_reason == "until_tool_called(lookup)"


async def test_any_of_flattens_lists_of_policies() -> None:
    result, lookups, _ = await run_lookups(any_of([max_steps(5)], [max_steps(2)]))

    assert result.stop_reason == "max_steps(2)"
    assert lookups.keys == ["a"]


async def test_max_iterations_caps_the_model_calls_of_a_run() -> None:
    lookups = Lookups()
    model = scripted(lookups=LOOKUP_TURNS)
    agent = Agent(model=model_of(model, "lookups"), tools=[lookups.tool], max_iterations=2)

    result = await agent.run("Find a, b and c.")

    assert (result.status, result.stop_reason) == ("incomplete", "max_iterations")
    assert lookups.keys == ["a", "b"]
    assert len(model.requests("lookups")) == 2
