"""The agent loop as a Python library: agents, tools, stop policies, events, taps.

    from stepline.agent import Agent, ChatModel, tool

    @tool
    def add(a: int, b: int) -> int:
        "Add two numbers."
        return a + b

    agent = Agent(model=ChatModel(model="llama", base_url="http://127.0.0.1:8001/v1"),
                  instructions="Use the tools.", tools=[add])
    result = await agent.run("What is 2 + 3?")

The same engine runs behind ``stepline serve``.
"""

from stepline._engine.policies import (
    RunState,
    StopPolicy,
    any_of,
    budget,
    max_steps,
    until_no_tool_calls,
    until_tool_called,
)
from stepline._engine.run_events import (
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    UsageDelta,
)
from stepline.agent._agent import Agent, AgentTool, ChatModel, HttpTool, RunResult, Usage, collect
from stepline.agent._function_tool import FunctionTool, tool

__all__ = [
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
