"""An agent among another agent's tools runs as a nested loop; its final text is the output."""

from __future__ import annotations

import pytest

from stepline.agent import (
    Agent,
    RunEvent,
    RunState,
    StopPolicy,
    ToolCallFinished,
    Usage,
    budget,
    tool,
    until_tool_called,
)
from stepline.errors import ConfigError
from stepline.scripted import ScriptedModel
from tests.library._support import call, model_of, scripted, shapes, turn

FACTS = {"moon": "384400 km away"}


@tool
async def lookup(topic: str) -> str:
    """Look a fact up."""
    return FACTS[topic]


def team(model: ScriptedModel) -> tuple[Agent, Agent]:
    researcher = Agent(
        model=model_of(model, "researcher"),
        name="researcher",
        description="Finds facts about a topic.",
        instructions="Research the topic with the lookup tool.",
        tools=[lookup],
    )
    lead = Agent(
        model=model_of(model, "lead"),
        instructions="Delegate research.",
        tools=[researcher],
    )
    return lead, researcher


def team_model() -> ScriptedModel:
    return scripted(
        lead=[
            turn(None, call("researcher", input="How far is the moon?"), usage=(11, 3)),
            turn("The moon is 384400 km away.", usage=(23, 7)),
        ],
        researcher=[
            turn(None, call("lookup", topic="moon"), usage=(5, 2)),
            turn("It is 384400 km away.", usage=(9, 6)),
        ],
    )


async def test_a_sub_agent_runs_its_own_loop_and_its_text_is_the_tool_output() -> None:
    model = team_model()
    lead, _ = team(model)

    result = await lead.run("How far is the moon?")

    assert (result.status, result.text) == ("completed", "The moon is 384400 km away.")
    # the sub-agent's loop: its instructions, the task as the user message, its own tools
    researcher_calls = model.requests("researcher")
    assert researcher_calls[0]["messages"] == [
        {"role": "system", "content": "Research the topic with the lookup tool."},
        {"role": "user", "content": "How far is the moon?"},
    ]
    assert [t["function"]["name"] for t in researcher_calls[0]["tools"]] == ["lookup"]
    assert researcher_calls[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": "384400 km away",
    }
    # the lead sees the researcher as one tool, and its final text as the output
    lead_calls = model.requests("lead")
    assert lead_calls[0]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "researcher",
                "description": "Finds facts about a topic.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "input": {"type": "string", "description": "The task for the agent."}
                    },
                    "required": ["input"],
                },
            },
        }
    ]
    assert lead_calls[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0_0",
        "content": "It is 384400 km away.",
    }
    # the transcript is the lead's; the sub-agent's steps are counted
    assert [m["role"] for m in result.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert result.steps == 6


async def test_usage_counts_the_agent_and_its_sub_agents() -> None:
    lead, _ = team(team_model())

    result = await lead.run("How far is the moon?")

    assert result.usage == Usage(
        prompt_tokens=11 + 23 + 5 + 9, completion_tokens=3 + 7 + 2 + 6, tool_invocations=2
    )


async def test_sub_agent_events_carry_the_calling_step_as_their_scope() -> None:
    events: list[RunEvent] = []
    lead, _ = team(team_model())
    lead.taps = (events.append,)

    await lead.run("How far is the moon?")

    shaped = [(kind, fields.get("step_id"), fields.get("scope")) for kind, fields in shapes(events)]
    assert shaped == [
        ("run_started", None, None),
        ("step_started", "step-1", None),
        ("usage_delta", "step-1", None),
        ("step_completed", "step-1", None),
        ("step_started", "step-2", None),
        ("tool_call_started", "step-2", None),
        # the researcher's run, inside step-2
        ("step_started", "step-3", "step-2"),
        ("usage_delta", "step-3", "step-2"),
        ("step_completed", "step-3", "step-2"),
        ("step_started", "step-4", "step-2"),
        ("tool_call_started", "step-4", "step-2"),
        ("tool_call_finished", "step-4", "step-2"),
        ("step_completed", "step-4", "step-2"),
        ("step_started", "step-5", "step-2"),
        *[("text_delta", "step-5", "step-2")] * 5,
        ("usage_delta", "step-5", "step-2"),
        ("step_completed", "step-5", "step-2"),
        ("tool_call_finished", "step-2", None),
        ("step_completed", "step-2", None),
        ("step_started", "step-6", None),
        *[("text_delta", "step-6", None)] * 6,
        ("usage_delta", "step-6", None),
        ("step_completed", "step-6", None),
        ("run_completed", None, None),
    ]
    finished = [e for e in events if isinstance(e, ToolCallFinished) and e.name == "researcher"]
    assert [e.output for e in finished] == ["It is 384400 km away."]


async def test_a_sub_agent_that_fails_is_a_tool_error_for_its_caller() -> None:
    model = scripted(
        lead=[
            turn(None, call("researcher", input="Moon?")),
            turn("The researcher could not help."),
        ],
        researcher=[turn(None, call("lookup", topic="moon"))],  # no turn after the lookup
    )
    lead, _ = team(model)

    result = await lead.run("How far is the moon?")

    assert (result.status, result.text) == ("completed", "The researcher could not help.")
    error = model.requests("lead")[1]["messages"][-1]["content"]
    assert error.startswith("Error: agent 'researcher' ended failed: ")
    assert "script researcher has no turn 1" in error


@pytest.mark.parametrize(("max_depth", "runs"), [(1, True), (0, False)])
async def test_max_depth_counts_the_sub_agent_levels_it_allows(max_depth: int, runs: bool) -> None:
    model = team_model()
    researcher = team(model)[1]
    lead = Agent(model=model_of(model, "lead"), tools=[researcher], max_depth=max_depth)

    await lead.run("How far is the moon?")

    # max_depth=1 lets the lead's sub-agent run (one level), max_depth=0 none
    answer = model.requests("lead")[1]["messages"][-1]["content"]
    if runs:
        assert answer == "It is 384400 km away."
    else:
        assert answer == "Error: agent 'researcher' not run: max_depth 0 reached"
    assert len(model.requests("researcher")) == (2 if runs else 0)


async def test_as_tool_renames_a_sub_agent() -> None:
    model = scripted(
        lead=[turn(None, call("ask_expert", input="Moon?")), turn("Done.")],
        researcher=[turn("Far.")],
    )
    _, researcher = team(model)
    lead = Agent(
        model=model_of(model, "lead"),
        tools=[researcher.as_tool(name="ask_expert", description="Ask the expert.")],
    )

    result = await lead.run("Moon?")

    assert result.messages[-2] == {"role": "tool", "tool_call_id": "call_0_0", "content": "Far."}
    function = model.requests("lead")[0]["tools"][0]["function"]
    assert (function["name"], function["description"]) == ("ask_expert", "Ask the expert.")


async def test_an_agent_cannot_be_its_own_sub_agent() -> None:
    model = scripted(loop=[turn("never")])
    agent = Agent(model=model_of(model, "loop"))
    agent.tools = (agent,)

    with pytest.raises(ConfigError, match="its own sub-agent"):
        await agent.run("Hi.")


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        # the lead's call of the researcher and the researcher's lookup
        (budget(tool_invocations=2), "budget(tool_invocations=2)"),
        # 11 of the lead's first call, then 5 + 9 of the researcher's
        (budget(prompt_tokens=20), "budget(prompt_tokens=20)"),
        (until_tool_called("lookup"), "until_tool_called(lookup)"),
    ],
    ids=["tool_invocations", "prompt_tokens", "tool_called"],
)
async def test_stop_policies_count_what_sub_agents_did(policy: StopPolicy, reason: str) -> None:
    model = team_model()
    lead, _ = team(model)
    lead.stops = (policy,)

    result = await lead.run("How far is the moon?")

    # it fires right after the researcher's step, before the lead is asked again
    assert (result.status, result.stop_reason) == ("incomplete", reason)
    assert len(model.requests("lead")) == 1


async def test_the_run_state_includes_sub_agents() -> None:
    states: list[tuple[int, int, int, int, list[str], bool]] = []

    def spy(state: RunState) -> str | None:
        states.append(
            (
                state.model_calls,
                state.tool_invocations,
                state.input_tokens,
                state.output_tokens,
                sorted(state.tools_called),
                state.wants_tools,
            )
        )
        return None

    lead, _ = team(team_model())
    lead.stops = (spy,)

    result = await lead.run("How far is the moon?")

    assert result.status == "completed"
    assert states == [
        # the lead asked for the researcher
        (1, 0, 11, 3, [], True),
        # the researcher ran: two model calls and a lookup, inside the lead's tool call
        (3, 2, 25, 11, ["lookup", "researcher"], True),
        # the lead's answer
        (4, 2, 48, 18, ["lookup", "researcher"], False),
    ]
