"""``POST /v1/responses/input_tokens`` through the OpenAI SDK, counted by the upstream's
tokenizer: the scripted model's vLLM-shaped ``/tokenize``, served for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Stack, serve_stack

WEATHER = {
    "type": "function",
    "name": "local_time",
    "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack whose upstream counts tokens like vLLM (``tokenize = "vllm"``)."""

    def configure(data: dict[str, Any], tools_url: str) -> None:
        data["upstreams"]["scripted"]["tokenize"] = "vllm"

    async with AsyncExitStack() as exits:
        yield await serve_stack(exits, "sqlite", tmp_path, configure=configure)


async def test_counts_what_a_create_would_send_with_the_upstream_tokenizer(counted: Stack) -> None:
    counted.script("count", [{"content": "ok"}])

    counted_tokens = await counted.client.responses.input_tokens.count(
        model="count",
        instructions="Answer briefly.",
        input="What time is it in Lima?",
        tools=[WEATHER],  # type: ignore[list-item]
    )

    assert counted_tokens.object == "response.input_tokens"
    assert counted_tokens.input_tokens == 2 + 6  # one token a word, as /tokenize counts
    (asked,) = counted.model.tokenize_requests()
    response = await counted.client.responses.create(
        model="count",
        instructions="Answer briefly.",
        input="What time is it in Lima?",
        tools=[WEATHER],  # type: ignore[list-item]
    )
    sent = counted.model.requests("count")[-1]
    assert asked["messages"] == sent["messages"]
    assert asked["tools"] == sent["tools"]
    assert asked["model"] == "count" and asked["add_generation_prompt"] is True
    assert response.usage is not None
    assert counted_tokens.input_tokens == response.usage.input_tokens


async def test_counts_the_conversation_previous_response_id_continues(counted: Stack) -> None:
    counted.script("chat", [{"content": "Lima is sunny today."}])
    first = await counted.client.responses.create(model="chat", input="Weather in Lima?")

    counted_tokens = await counted.client.responses.input_tokens.count(
        model="chat", previous_response_id=first.id, input="And tomorrow?"
    )

    assert counted_tokens.input_tokens == 3 + 4 + 2
    assert counted.model.tokenize_requests()[-1]["messages"] == [
        {"role": "user", "content": "Weather in Lima?"},
        {"role": "assistant", "content": "Lima is sunny today."},
        {"role": "user", "content": "And tomorrow?"},
    ]


async def test_counts_a_conversation_as_a_create_would_read_it(counted: Stack) -> None:
    conversation = await counted.client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "Weather in Lima?"}]
    )
    counted.script("chat", [{"content": "Lima is sunny today."}])
    await counted.client.responses.create(
        model="chat", conversation=conversation.id, input="And tomorrow?"
    )

    counted_tokens = await counted.client.responses.input_tokens.count(
        model="chat", conversation=conversation.id, input="Thanks."
    )

    assert counted.model.tokenize_requests()[-1]["messages"] == [
        {"role": "user", "content": "Weather in Lima?"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "Lima is sunny today."},
        {"role": "user", "content": "Thanks."},
    ]
    assert counted_tokens.input_tokens == 3 + 2 + 4 + 1


async def test_without_a_tokenizer_counting_is_a_400_not_a_guess(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await stack.client.responses.input_tokens.count(model="count", input="Hello there")

    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "token_counting_unavailable" and error["param"] == "model"
    assert "tokenize" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "Hello"}, 400, "model"),
        ({"model": "count", "input": [{"type": "message", "role": "robot"}]}, 400, "input[0].role"),
        ({"model": "count", "input": "x", "previous_response_id": "resp_missing"}, 404, None),
        ({"model": "count", "input": "x", "conversation": "conv_missing"}, 404, "conversation"),
        (
            {"model": "count", "input": "x", "conversation": "c", "previous_response_id": "r"},
            400,
            "conversation",
        ),
    ],
)
async def test_bad_count_requests_get_the_error_envelope(
    counted: Stack, body: dict[str, Any], status: int, param: str | None
) -> None:
    reply = await counted.http.post("/v1/responses/input_tokens", json=body)

    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    assert counted.model.tokenize_requests() == []
