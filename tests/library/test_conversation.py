"""What the model is sent: the agent's instructions, and the conversation validator."""

from __future__ import annotations

from typing import Any

import pytest

from stepline.agent import Agent
from tests.library._support import model_of, scripted, turn

ORPHAN_RESULT: list[dict[str, Any]] = [
    {"role": "user", "content": "What did the tool say?"},
    {"type": "function_call_output", "call_id": "call_nobody", "output": "42"},
]


@pytest.mark.parametrize(
    "given",
    [
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi."}],
        [
            {"role": "developer", "content": "Talk like a pirate."},
            {"role": "user", "content": "Hi."},
        ],
        [{"role": "user", "content": "Hi."}],
        "Hi.",
    ],
    ids=["system", "developer", "no-system", "text"],
)
async def test_instructions_are_the_only_system_message(given: Any) -> None:
    model = scripted(plain=[turn("Hello.")])
    agent = Agent(model=model_of(model, "plain"), instructions="Be brief.")

    result = await agent.run(given)

    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."}]
    (request,) = model.requests("plain")
    assert request["messages"] == expected
    assert result.messages == [*expected, {"role": "assistant", "content": "Hello."}]


async def test_without_instructions_the_input_system_message_stays() -> None:
    model = scripted(plain=[turn("Arr.")])
    agent = Agent(model=model_of(model, "plain"))
    given = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi."}]

    await agent.run(given)

    (request,) = model.requests("plain")
    assert request["messages"] == given


@pytest.mark.parametrize("validation", ["strict", "lenient"])
async def test_a_tool_result_answering_no_call_is_refused(validation: Any) -> None:
    model = scripted(plain=[turn("It said 42.")])
    agent = Agent(model=model_of(model, "plain"), validation=validation)

    result = await agent.run(ORPHAN_RESULT)

    assert (result.status, result.stop_reason) == ("failed", "error")
    assert result.error == (
        "invalid conversation: "
        "No tool call found for function call output with call_id call_nobody."
    )
    assert model.requests("plain") == []


async def test_validation_off_sends_the_conversation_as_it_is() -> None:
    model = scripted(plain=[turn("It said 42.")])
    agent = Agent(model=model_of(model, "plain"), validation="off")

    result = await agent.run(ORPHAN_RESULT)

    assert (result.status, result.text) == ("completed", "It said 42.")
    (request,) = model.requests("plain")
    assert request["messages"] == [
        {"role": "user", "content": "What did the tool say?"},
        {"role": "tool", "tool_call_id": "call_nobody", "content": "42"},
    ]


async def test_strict_validation_refuses_an_unanswered_call_that_lenient_lets_through() -> None:
    given = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": "call_w", "name": "weather", "arguments": "{}"},
        {"role": "user", "content": "Never mind."},
    ]
    # the scripted model answers by the number of assistant messages: turn 1 here
    strict_model = scripted(plain=[turn("unused"), turn("OK.")])
    lenient_model = scripted(plain=[turn("unused"), turn("OK.")])

    strict = await Agent(model=model_of(strict_model, "plain"), validation="strict").run(given)
    lenient = await Agent(model=model_of(lenient_model, "plain"), validation="lenient").run(given)

    assert strict.status == "failed"
    assert strict.error == "invalid conversation: No tool output found for function call call_w."
    assert strict_model.requests("plain") == []
    assert (lenient.status, lenient.text) == ("completed", "OK.")
    assert len(lenient_model.requests("plain")) == 1
