"""LangChain's ``ChatOpenAI`` on the Responses API against stepline on a real socket.

An application written with langchain-openai only changes ``base_url``: plain
and streamed answers, a tool the application runs itself (sent back with
``previous_response_id`` or with the whole history), and a server tool that
stepline runs while LangChain only sees the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.e2e.conftest import Stack

LOCAL_TIME = {"name": "local_time", "arguments": {"city": "Lima"}}


@tool
def local_time(city: str) -> str:
    """The local time in a city."""
    return "09:30"


@pytest.fixture
async def sent() -> AsyncIterator[tuple[httpx.AsyncClient, list[dict[str, Any]]]]:
    """An HTTP client for ChatOpenAI that keeps every request body it sends to stepline."""
    bodies: list[dict[str, Any]] = []

    async def keep(request: httpx.Request) -> None:
        bodies.append(orjson.loads(request.content))

    async with httpx.AsyncClient(event_hooks={"request": [keep]}, timeout=30) as http:
        yield http, bodies


def chat(stack: Stack, model: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=stack.url + "/v1",
        api_key="test",
        model=model,
        use_responses_api=True,
        max_retries=0,
        **options,
    )


async def test_invoke_returns_the_scripted_answer(stack: Stack) -> None:
    stack.script(
        "hello",
        [
            {
                "content": "Hello there, friend.",
                "usage": {"prompt_tokens": 7, "completion_tokens": 4},
            }
        ],
    )

    answer = await chat(stack, "hello").ainvoke("Hi!")

    assert isinstance(answer, AIMessage)
    assert answer.text == "Hello there, friend."
    assert answer.tool_calls == []
    assert answer.response_metadata["id"].startswith("resp_")
    assert answer.response_metadata["status"] == "completed"
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 7
    assert answer.usage_metadata["output_tokens"] == 4
    assert stack.model.requests("hello")[0]["messages"] == [{"role": "user", "content": "Hi!"}]


async def test_astream_chunks_add_up_to_the_scripted_text(stack: Stack) -> None:
    stack.script("story", [{"content": "one two three four"}])

    chunks = [chunk async for chunk in chat(stack, "story").astream("count")]

    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    pieces = [chunk.text for chunk in chunks if chunk.text]
    # token by token, as the scripted model streamed them
    assert pieces == ["one", " two", " three", " four"]
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk)
    assert whole.text == "one two three four"
    assert whole.response_metadata["id"].startswith("resp_")
    assert stack.model.requests("story")[0]["stream"] is True


@pytest.mark.parametrize("use_previous_response_id", [True, False], ids=["chained", "resent"])
async def test_a_client_tool_call_round_trips_through_a_tool_message(
    stack: Stack,
    sent: tuple[httpx.AsyncClient, list[dict[str, Any]]],
    use_previous_response_id: bool,
) -> None:
    stack.script(
        "timekeeper",
        [{"tool_calls": [LOCAL_TIME]}, {"content": "It is 09:30 in Lima."}],
    )
    http, bodies = sent
    model = chat(
        stack,
        "timekeeper",
        use_previous_response_id=use_previous_response_id,
        http_async_client=http,
    )
    bound = model.bind_tools([local_time])
    history: list[Any] = [HumanMessage("What time is it in Lima?")]

    asked = await bound.ainvoke(history)

    assert isinstance(asked, AIMessage)
    [call] = asked.tool_calls
    assert (call["name"], call["args"]) == ("local_time", {"city": "Lima"})
    assert asked.response_metadata["status"] == "completed"
    # the bound tool reaches the model beside the server tools stepline adds
    sent_tools = {t["function"]["name"]: t for t in stack.model.requests("timekeeper")[0]["tools"]}
    assert sent_tools["local_time"]["function"]["parameters"]["properties"] == {
        "city": {"type": "string"}
    }

    result = await local_time.ainvoke(call)
    assert isinstance(result, ToolMessage)
    history += [asked, result]
    answer = await bound.ainvoke(history)

    assert isinstance(answer, AIMessage)
    assert answer.text == "It is 09:30 in Lima."
    assert answer.tool_calls == []
    # what LangChain sent stepline the second time: only the result after the
    # response it chains to, or the whole history with the call it answers
    second = bodies[1]
    output = {"type": "function_call_output", "call_id": call["id"], "output": "09:30"}
    if use_previous_response_id:
        assert second["previous_response_id"] == asked.response_metadata["id"]
        assert second["input"] == [output]
    else:
        assert "previous_response_id" not in second
        assert [item["type"] for item in second["input"]] == [
            "message",
            "function_call",
            "function_call_output",
        ]
        assert second["input"][0]["role"] == "user"
        assert second["input"][1]["call_id"] == call["id"]
        assert second["input"][2] == output
    # either way the model saw the whole conversation, with the client's result
    messages = stack.model.requests("timekeeper")[1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "local_time"
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": messages[1]["tool_calls"][0]["id"],
        "content": "09:30",
    }


async def test_a_server_tool_runs_on_the_server(stack: Stack) -> None:
    stack.script(
        "forecaster",
        [
            {"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]},
            {"content": "It is sunny in Paris."},
        ],
    )

    answer = await chat(stack, "forecaster").ainvoke("Weather in Paris?")

    assert isinstance(answer, AIMessage)
    assert answer.text == "It is sunny in Paris."
    # stepline ran the tool: nothing is left for the application to run, and
    # LangChain shows the server's call beside the text
    assert answer.tool_calls == []
    assert isinstance(answer.content, list)
    [server_call] = [block for block in answer.content if block["type"] == "mcp_call"]  # type: ignore[index]
    assert server_call["name"] == "weather"  # type: ignore[index]
    assert server_call["output"] == '{"city":"Paris","conditions":"sunny"}'  # type: ignore[index]
    assert stack.tools.calls == {"weather": 1}
    assert stack.tools.bodies["weather"] == [{"city": "Paris"}]
    messages = stack.model.requests("forecaster")[1]["messages"]
    assert messages[-1]["role"] == "tool"
    assert messages[-1]["content"] == '{"city":"Paris","conditions":"sunny"}'
