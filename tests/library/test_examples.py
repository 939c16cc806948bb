"""The examples run standalone, as a reader would run them, and print what they promise."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from stepline.agent import Agent, FunctionTool
from tests.library._support import call, model_of, scripted, turn

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str) -> str:
    """``python examples/NAME.py`` from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_library_quickstart() -> None:
    assert run_example("library_quickstart.py").splitlines() == [
        "answer: 120 USD is 108.0 EUR.",
        'tool output: {"amount":108.0,"currency":"EUR"}',
        "status: completed (until_no_tool_calls)",
        "steps: 3, tool calls: 1",
    ]


def test_library_stream() -> None:
    assert run_example("library_stream.py").splitlines() == [
        "Searching the docs.",
        '  calling search {"query":"stepline durability"}',
        '  calling search {"query":"stepline library"}',
        "Saving what I found.",
        '  calling save_note {"text":"Steps are stored; one loop for both."}',
        "run incomplete, stopped by until_tool_called(save_note)",
        "steps: 5, tool calls: 3",
        "notes: ['Steps are stored; one loop for both.']",
        "audit log:",
        "  search -> Every step is stored before it runs.",
        "  search -> The library runs the server's loop in process.",
        "  save_note -> note 1 saved",
        "the tap saw 27 events, the stream yielded 27",
    ]


def test_python_tools_lists_its_tools() -> None:
    lines = run_example("python_tools.py").splitlines()

    assert lines[0::2] == [
        "add: Add two whole numbers.",
        "word_count: Count the words of a text.",
        "convert_temperature: Convert a temperature between Celsius and Fahrenheit.",
        "describe_number: Facts about a positive whole number: parity, primality and divisors.",
    ]
    assert orjson.loads(lines[1]) == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "a": {"type": "integer", "description": "The first number."},
            "b": {"type": "integer", "description": "The second number."},
        },
        "required": ["a", "b"],
    }
    assert orjson.loads(lines[5])["properties"]["to"] == {
        "type": "string",
        "enum": ["celsius", "fahrenheit"],
        "description": "The scale to convert it to.",
    }


async def test_python_tools_is_a_module_of_tools_an_agent_can_run() -> None:
    module: Any = importlib.import_module("examples.python_tools")
    assert all(isinstance(t, FunctionTool) for t in module.TOOLS)
    assert [t.name for t in module.TOOLS] == [
        "add",
        "word_count",
        "convert_temperature",
        "describe_number",
    ]
    model = scripted(
        tools=[
            turn(
                None,
                call("add", a=2, b=3),
                call("word_count", text="the cat and the hat", unique=True),
                call("convert_temperature", value=100, to="fahrenheit"),
                call("describe_number", n=12),
                call("describe_number", n=0),
            ),
            turn("Done."),
        ]
    )
    agent = Agent(model=model_of(model, "tools"), tools=module.TOOLS)

    result = await agent.run("Use every tool.")

    assert [m["content"] for m in result.messages if m["role"] == "tool"] == [
        "5",
        "4",
        '{"value":212.0,"scale":"fahrenheit"}',
        '{"number":12,"even":true,"prime":false,"divisors":[1,2,3,4,6,12]}',
        "Error: tool 'describe_number' raised ValueError: n must be at least 1",
    ]
