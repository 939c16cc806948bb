"""``@tool``: the schema a function gets, and what happens to each call of it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import BaseModel

from stepline.agent import Agent, FunctionTool, tool
from stepline.errors import ToolError
from stepline.scripted import ScriptedToolCall
from tests.library._support import call, model_of, scripted, turn

SEARCHES: list[dict[str, Any]] = []


@tool
def search(
    query: str,
    limit: int = 10,
    tags: list[str] | None = None,
    near: str | None = None,
    exact: bool = False,
) -> list[str]:
    """Search the catalogue for items.

    Titles and descriptions both match; this paragraph is not the summary.

    Args:
        query: What to look for.
        limit: How many results at most.
        tags (list[str]): Only items with all of these tags.
        near: A place the items must be close to.
    """
    SEARCHES.append({"query": query, "limit": limit, "tags": tags, "near": near, "exact": exact})
    return [f"{query} #{n}" for n in range(min(limit, 2))]


@pytest.fixture(autouse=True)
def _forget_searches() -> None:
    SEARCHES.clear()


def test_the_schema_comes_from_type_hints_and_the_docstring() -> None:
    assert isinstance(search, FunctionTool)
    assert search.name == "search"
    assert search.description == "Search the catalogue for items."
    assert search.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "query": {"type": "string", "description": "What to look for."},
            "limit": {"type": "integer", "default": 10, "description": "How many results at most."},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
                "description": "Only items with all of these tags.",
            },
            "near": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "A place the items must be close to.",
            },
            "exact": {"type": "boolean", "default": False},
        },
        "required": ["query"],
    }


def test_sphinx_params_name_and_description_overrides() -> None:
    @tool(name="convert", description="Convert an amount between currencies.")
    def to_currency(amount: float, currency: str = "EUR") -> str:
        """Ignored, the decorator's description wins.

        :param amount: How much money.
        :param str currency: The ISO code to convert to.
        """
        return f"{amount} {currency}"

    assert (to_currency.name, to_currency.description) == (
        "convert",
        "Convert an amount between currencies.",
    )
    assert to_currency.parameters == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "amount": {"type": "number", "description": "How much money."},
            "currency": {
                "type": "string",
                "default": "EUR",
                "description": "The ISO code to convert to.",
            },
        },
        "required": ["amount"],
    }
    # a decorated function stays callable as before
    assert to_currency(2.5) == "2.5 EUR"


def test_a_function_with_star_args_cannot_be_a_tool() -> None:
    def spread(*values: int) -> int:
        return sum(values)

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):
        tool(spread)


async def test_the_offered_tool_is_the_derived_schema() -> None:
    model = scripted(find=[turn("Nothing to search.")])
    agent = Agent(model=model_of(model, "find"), tools=[search])

    await agent.run("Hi.")

    (request,) = model.requests("find")
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search the catalogue for items.",
                "parameters": search.parameters,
            },
        }
    ]


def tool_outputs(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "tool"]


async def test_arguments_are_validated_and_defaults_filled_before_the_call() -> None:
    model = scripted(
        find=[
            turn(
                None,
                call("search", query="lamp", tags=["red"]),
                call("search", limit="many"),
                ScriptedToolCall(name="search", arguments='{"query": "la'),
            ),
            turn("Found lamps."),
        ]
    )
    agent = Agent(model=model_of(model, "find"), tools=[search])

    result = await agent.run("Find a lamp.")

    assert result.status == "completed"
    assert SEARCHES == [
        {"query": "lamp", "limit": 10, "tags": ["red"], "near": None, "exact": False}
    ]
    follow_up = model.requests("find")[1]["messages"]
    outputs = tool_outputs(follow_up)
    # the model sees each refusal as the tool's error
    assert outputs[:2] == [
        '["lamp #0","lamp #1"]',
        "Error: arguments for tool 'search' do not match its schema at limit: "
        "'many' is not of type 'integer'",
    ]
    # the parser's own words sit in the parentheses
    assert outputs[2].startswith("Error: arguments for tool 'search' are not valid JSON (")
    assert outputs[2].endswith('): {"query": "la')
    assert outputs == tool_outputs(result.messages)


async def test_invoke_refuses_bad_arguments_without_running_the_function() -> None:
    with pytest.raises(ToolError) as refused:
        await search.invoke({"limit": "many", "colour": "red"})

    assert refused.value.message == (
        "arguments for tool 'search' are invalid: "
        "query: Field required; "
        "limit: Input should be a valid integer, unable to parse string as an integer; "
        "colour: Extra inputs are not permitted"
    )
    assert SEARCHES == []


async def test_a_sync_function_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    @tool
    def measure(text: str) -> int:
        """Count the characters of a text."""
        threads.append(threading.get_ident())
        return len(text)

    model = scripted(count=[turn(None, call("measure", text="hello")), turn("Five.")])
    agent = Agent(model=model_of(model, "count"), tools=[measure])

    result = await agent.run("How long is hello?")

    assert tool_outputs(result.messages) == ["5"]
    assert result.text == "Five."
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_a_function_that_raises_becomes_a_tool_error_the_model_sees() -> None:
    @tool
    async def divide(a: int, b: int) -> float:
        """Divide a by b."""
        return a / b

    model = scripted(math=[turn(None, call("divide", a=1, b=0)), turn("Cannot divide by zero.")])
    agent = Agent(model=model_of(model, "math"), tools=[divide])

    result = await agent.run("1 / 0?")

    assert (result.status, result.text) == ("completed", "Cannot divide by zero.")
    follow_up = model.requests("math")[1]["messages"]
    assert tool_outputs(follow_up) == [
        "Error: tool 'divide' raised ZeroDivisionError: division by zero"
    ]


class Forecast(BaseModel):
    city: str
    celsius: float
    rain: bool


@pytest.mark.parametrize(
    ("result", "rendered"),
    [
        (
            Forecast(city="Zürich", celsius=21.5, rain=False),
            '{"city":"Zürich","celsius":21.5,"rain":false}',
        ),
        (
            {"city": "Oslo", "days": [1, 2], "note": None},
            '{"city":"Oslo","days":[1,2],"note":null}',
        ),
        ([1, "two", 3.0], '[1,"two",3.0]'),
        ("plain text stays as it is", "plain text stays as it is"),
        (42, "42"),
    ],
    ids=["pydantic", "dict", "list", "str", "int"],
)
async def test_results_are_rendered_as_text_for_the_model(result: Any, rendered: str) -> None:
    @tool
    async def forecast(city: str) -> Any:
        """The forecast for a city."""
        return result

    model = scripted(weather=[turn(None, call("forecast", city="Zürich")), turn("Done.")])
    agent = Agent(model=model_of(model, "weather"), tools=[forecast])

    run = await agent.run("Forecast?")

    assert tool_outputs(model.requests("weather")[1]["messages"]) == [rendered]
    assert tool_outputs(run.messages) == [rendered]


async def test_a_pydantic_model_parameter_arrives_as_the_model() -> None:
    received: list[Forecast] = []

    @tool
    async def record(forecast: Forecast) -> str:
        """Record a forecast."""
        received.append(forecast)
        return "recorded"

    model = scripted(
        log=[
            turn(None, call("record", forecast={"city": "Oslo", "celsius": -3, "rain": True})),
            turn("Recorded."),
        ]
    )
    agent = Agent(model=model_of(model, "log"), tools=[record])

    result = await agent.run("Record it.")

    assert tool_outputs(result.messages) == ["recorded"]
    assert received == [Forecast(city="Oslo", celsius=-3.0, rain=True)]
