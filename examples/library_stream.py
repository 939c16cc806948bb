"""Streaming a run's events, watching them with a tap, and stopping with a stop policy.

Runs as is, with no network and no server::

    .venv/bin/python examples/library_stream.py

``agent.stream(...)`` yields typed events as the run goes: text as the model
streams it, each tool call starting and finishing, usage, and at the end
``run_completed`` with the whole result. A tap is a plain function that sees
the very same events, in order, as they happen (here it keeps an audit log
of tool calls). The stop policy ends the run as soon as a note is saved,
before the model is asked anything else; any of the policies may fire first,
and the run's stop reason names the one that did.

The model is stepline's scripted model, in process, playing ``SCRIPT``.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from stepline.agent import (
    Agent,
    ChatModel,
    RunCompleted,
    RunEvent,
    StepCompleted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    any_of,
    max_steps,
    tool,
    until_tool_called,
)
from stepline.scripted import Script, ScriptedModel, ScriptedToolCall, Turn

PAGES = {
    "stepline durability": "Every step is stored before it runs.",
    "stepline library": "The library runs the server's loop in process.",
}
NOTES: list[str] = []


@tool
async def search(query: str) -> str:
    """Search the documentation.

    Args:
        query: What to look for.
    """
    return PAGES.get(query, "nothing found")


@tool
async def save_note(text: str) -> str:
    """Save a note for later.

    Args:
        text: The note.
    """
    NOTES.append(text)
    return f"note {len(NOTES)} saved"


SCRIPT = Script(
    turns=(
        Turn(
            content="Searching the docs.",
            tool_calls=(
                ScriptedToolCall(name="search", arguments={"query": "stepline durability"}),
                ScriptedToolCall(name="search", arguments={"query": "stepline library"}),
            ),
        ),
        Turn(
            content="Saving what I found.",
            tool_calls=(
                ScriptedToolCall(
                    name="save_note", arguments={"text": "Steps are stored; one loop for both."}
                ),
            ),
        ),
        Turn(content="This turn is never played: the stop policy ends the run first."),
    )
)


async def main() -> None:
    audit: list[str] = []
    seen: Counter[str] = Counter()

    def tap(event: RunEvent) -> None:
        seen[event.type] += 1
        if isinstance(event, ToolCallFinished):
            audit.append(f"{event.name} -> {event.output if event.error is None else event.error}")

    agent = Agent(
        model=ChatModel.scripted(ScriptedModel({"researcher": SCRIPT}), "researcher"),
        instructions="Research, then save a note.",
        tools=[search, save_note],
        stop=any_of(max_steps(6), until_tool_called("save_note")),
        taps=[tap],
    )

    streamed = 0
    async for event in agent.stream("What makes stepline durable?"):
        streamed += 1
        if isinstance(event, TextDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, StepCompleted) and event.kind == "model_call":
            print()
        elif isinstance(event, ToolCallStarted):
            print(f"  calling {event.name} {event.arguments}")
        elif isinstance(event, RunCompleted):
            print(f"run {event.status}, stopped by {event.stop_reason}")
            print(f"steps: {event.steps}, tool calls: {event.tool_invocations}")

    print(f"notes: {NOTES}")
    print("audit log:")
    for line in audit:
        print(f"  {line}")
    print(f"the tap saw {sum(seen.values())} events, the stream yielded {streamed}")


if __name__ == "__main__":
    asyncio.run(main())
