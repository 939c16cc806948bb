"""Quickstart: a Python function as a tool, and an agent that calls it.

Runs as is, with no network and no server::

    .venv/bin/python examples/library_quickstart.py

The model here is stepline's scripted model, run in process: it plays the
two turns of ``SCRIPT`` (call the tool, then answer), so the output is the
same every time. For a real model, pass any OpenAI-compatible endpoint
instead::

    model = ChatModel(model="llama3.1", base_url="http://127.0.0.1:8001/v1")
"""

from __future__ import annotations

import asyncio

from stepline.agent import Agent, ChatModel, tool
from stepline.scripted import Script, ScriptedModel, ScriptedToolCall, Turn


@tool
def convert(amount: float, rate: float, currency: str = "EUR") -> dict[str, object]:
    """Convert an amount of money at an exchange rate.

    Args:
        amount: How much money, in the source currency.
        rate: Units of the target currency per unit of the source currency.
        currency: The target currency's ISO code.
    """
    return {"amount": round(amount * rate, 2), "currency": currency}


SCRIPT = Script(
    turns=(
        Turn(
            tool_calls=(ScriptedToolCall(name="convert", arguments={"amount": 120, "rate": 0.9}),)
        ),
        Turn(content="120 USD is 108.0 EUR."),
    )
)


async def main() -> None:
    model = ChatModel.scripted(ScriptedModel({"assistant": SCRIPT}), "assistant")
    agent = Agent(model=model, instructions="Use the tools to answer.", tools=[convert])

    result = await agent.run("How much is 120 USD in EUR, at 0.9?")

    tool_outputs = [m["content"] for m in result.messages if m["role"] == "tool"]
    print(f"answer: {result.text}")
    print(f"tool output: {tool_outputs[0]}")
    print(f"status: {result.status} ({result.stop_reason})")
    print(f"steps: {result.steps}, tool calls: {result.usage.tool_invocations}")


if __name__ == "__main__":
    asyncio.run(main())
