"""Python functions as server tools: ``stepline serve --tools examples.python_tools``.

Each ``@tool`` function here becomes a tool the server runs for the model,
exactly as an ``Agent`` would run it in process: the JSON schema comes from
the type hints, the descriptions from the docstring, and every call's
arguments are validated before the function runs. A synchronous function
runs in a worker thread; a result that is not text (a dict, a pydantic
model) reaches the model as JSON.

Run the module to see what the model is offered::

    .venv/bin/python examples/python_tools.py
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel

from stepline.agent import FunctionTool, tool

__all__ = ["TOOLS", "add", "convert_temperature", "describe_number", "word_count"]


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


@tool
def word_count(text: str, unique: bool = False) -> int:
    """Count the words of a text.

    Args:
        text: The text to count.
        unique: Count each distinct word (case-insensitive) once.
    """
    words = text.split()
    return len({word.lower() for word in words}) if unique else len(words)


@tool
def convert_temperature(value: float, to: Literal["celsius", "fahrenheit"]) -> dict[str, object]:
    """Convert a temperature between Celsius and Fahrenheit.

    Args:
        value: The temperature to convert.
        to: The scale to convert it to.
    """
    converted = value * 9 / 5 + 32 if to == "fahrenheit" else (value - 32) * 5 / 9
    return {"value": round(converted, 2), "scale": to}


class NumberFacts(BaseModel):
    number: int
    even: bool
    prime: bool
    divisors: list[int]


@tool
async def describe_number(n: int) -> NumberFacts:
    """Facts about a positive whole number: parity, primality and divisors.

    Args:
        n: The number, at least 1.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return NumberFacts(number=n, even=n % 2 == 0, prime=len(divisors) == 2, divisors=divisors)


#: every tool of this module, in the order the model is offered them
TOOLS: list[FunctionTool] = [add, word_count, convert_temperature, describe_number]


if __name__ == "__main__":
    for function_tool in TOOLS:
        print(f"{function_tool.name}: {function_tool.description}")
        print(f"  {json.dumps(function_tool.parameters, sort_keys=True)}")
