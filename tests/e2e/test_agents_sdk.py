"""The OpenAI Agents SDK runs a turn against stepline: its own tool beside a server tool."""

from __future__ import annotations

from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.e2e.conftest import Stack


async def test_agent_runs_its_own_tool_while_stepline_runs_a_server_tool(stack: Stack) -> None:
    set_tracing_disabled(True)
    stack.script(
        "agents",
        [
            {"tool_calls": [{"name": "weather", "arguments": {"city": "Lima"}}]},
            {"tool_calls": [{"name": "local_time", "arguments": {"city": "Lima"}}]},
            {"content": "Sunny in Lima, and it is 09:30 there."},
        ],
    )
    local_calls: list[str] = []

    @function_tool
    def local_time(city: str) -> str:
        """The local time in a city."""
        local_calls.append(city)
        return "09:30"

    agent = Agent(
        name="assistant",
        instructions="Answer with the tools.",
        tools=[local_time],
        model=OpenAIResponsesModel(model="agents", openai_client=stack.client),
    )

    result = await Runner.run(agent, "Weather and time in Lima?")

    assert result.final_output == "Sunny in Lima, and it is 09:30 there."
    assert local_calls == ["Lima"]
    assert stack.tools.calls == {"weather": 1}
    last = stack.model.requests("agents")[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert last[3]["content"] == '{"city":"Lima","conditions":"sunny"}'
    assert last[5] == {
        "role": "tool",
        "tool_call_id": last[4]["tool_calls"][0]["id"],
        "content": "09:30",
    }
