"""What the upstream receives for each request field, and what comes back."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from openai.types.responses.response_create_params import ToolChoice
from pydantic import TypeAdapter

from tests.e2e.conftest import Stack, read_sse

EVENTS = TypeAdapter(ResponseStreamEvent)


async def test_request_fields_map_onto_chat_completions(stack: Stack) -> None:
    stack.script("mapped", [{"content": '{"answer": 4}'}])
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }

    response = await stack.client.responses.create(
        model="mapped",
        instructions="Be terse.",
        input=[
            {"role": "developer", "content": "Numbers only."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this image?"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.test/cat.png",
                        "detail": "low",
                    },
                ],
            },
        ],
        text={
            "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
        },
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
    )

    assert response.output_text == '{"answer": 4}'
    assert response.instructions == "Be terse."
    body = stack.model.requests("mapped")[0]
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "system", "content": "Numbers only."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.test/cat.png", "detail": "low"},
                },
            ],
        },
    ]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 64)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_reasoning_content_becomes_a_reasoning_item(stack: Stack) -> None:
    stack.script("thinker", [{"reasoning": "Two plus two.", "content": "4"}])

    async with stack.http.stream(
        "POST", "/v1/responses", json={"model": "thinker", "input": "2+2?", "stream": True}
    ) as reply:
        events = await read_sse(reply)

    for event in events:
        EVENTS.validate_python(event)
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "Two plus two."}]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == "Two plus two."
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    assert added == ["reasoning", "message"]


def _offered(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


async def test_allowed_tools_is_a_hard_limit(stack: Stack) -> None:
    stack.script(
        "limited",
        [
            {"tool_calls": [{"name": "stock", "arguments": {"symbol": "X"}}]},
            {"content": "ok"},
        ],
    )

    response = await stack.client.responses.create(
        model="limited",
        input="go",
        tool_choice={
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "weather"}],
        },
    )

    first, follow_up = stack.model.requests("limited")
    assert _offered(first) == ["weather"]
    assert first["tool_choice"] == "auto"
    assert response.output[0].type == "mcp_call"
    assert response.output[0].status == "failed"
    assert stack.tools.calls == {}
    assert follow_up["messages"][-1]["content"] == (
        "Error: tool 'stock' is not allowed in this response"
    )


async def test_tool_choice_binds_the_first_call_only(stack: Stack) -> None:
    stack.script(
        "forced",
        [{"tool_calls": [{"name": "weather", "arguments": {"city": "X"}}]}, {"content": "done"}],
    )

    await stack.client.responses.create(
        model="forced", input="go", tool_choice="required", parallel_tool_calls=False
    )

    first, follow_up = stack.model.requests("forced")
    assert first["tool_choice"] == "required"
    assert first["parallel_tool_calls"] is False
    assert follow_up["tool_choice"] == "auto"
    assert _offered(first) == ["weather", "stock", "fail", "hang", "researcher"]


async def test_tool_choice_forcing_a_tool_nothing_provides_is_a_400(stack: Stack) -> None:
    """Refused at create, where the client sees it, not failed at run time."""
    stack.script("chosen", [{"tool_calls": [{"name": "weather", "arguments": {"city": "X"}}]}])
    choices: list[ToolChoice] = [
        {"type": "web_search_preview"},
        {"type": "function", "name": "nobody"},
    ]
    for choice in choices:
        with pytest.raises(openai.BadRequestError) as refused:
            await stack.client.responses.create(model="chosen", input="go", tool_choice=choice)
        assert refused.value.body["param"] == "tool_choice"  # type: ignore[index]
    assert stack.model.requests("chosen") == []
