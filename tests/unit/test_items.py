"""Responses items <-> Chat Completions messages: request input, stored chains, checks."""

from __future__ import annotations

from typing import Any

import pytest

from stepline._chat.messages import chain_messages, finalize_messages, tool_error_text
from stepline._engine.validate import conversation_problem
from stepline._protocol.items import input_messages, message_item
from stepline._protocol.request import InputItem, parse_request
from stepline._steps import Step, StepKind, StepState
from stepline._tools.registry import SERVER_LABEL

RESPONSE_ID = "resp_test"


def items(*raw: dict[str, Any]) -> list[InputItem]:
    """Typed input items, parsed the way a request body is."""
    return parse_request({"model": "test-model", "input": list(raw)}).input


def call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def model_step(
    sequence: int,
    *,
    calls: tuple[dict[str, Any], ...] = (),
    content: str | None = None,
    reasoning: str | None = None,
    state: StepState = StepState.COMPLETED,
) -> Step:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    completed = state is StepState.COMPLETED
    return Step(
        id=f"step_{sequence}",
        response_id=RESPONSE_ID,
        scope=None,
        previous_step_id=None,
        sequence=sequence,
        kind=StepKind.MODEL_CALL,
        state=state,
        request={"iteration": 1},
        response={
            "message": message,
            "items": [],
            "usage": {},
            "finish_reason": "tool_calls" if calls else "stop",
        }
        if completed
        else None,
        error=None if completed else {"message": "upstream failed", "code": "model_error"},
    )


def tool_step(
    sequence: int,
    call_id: str,
    name: str,
    *,
    state: StepState = StepState.COMPLETED,
    output: str = "ok",
    error: dict[str, Any] | None = None,
) -> Step:
    return Step(
        id=f"step_{sequence}",
        response_id=RESPONSE_ID,
        scope=None,
        previous_step_id=None,
        sequence=sequence,
        kind=StepKind.TOOL_CALL,
        state=state,
        request={"name": name, "arguments": "{}"},
        response={"output": output} if state is StepState.COMPLETED else None,
        error=error,
        call_id=call_id,
    )


def tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


# -- input_messages -------------------------------------------------------------


def test_developer_becomes_system_and_text_parts_collapse_to_a_string() -> None:
    assert input_messages(
        items(
            {"role": "developer", "content": "Answer briefly."},
            {"role": "system", "content": [{"type": "input_text", "text": "Be kind."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Hello, "},
                    {"type": "input_text", "text": "world."},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hi!", "annotations": []},
                    {"type": "refusal", "refusal": " Not that."},
                ],
            },
        )
    ) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello, world."},
        {"role": "assistant", "content": "Hi! Not that."},
    ]


def test_images_become_image_url_parts_beside_text_parts() -> None:
    assert input_messages(
        items(
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.test/a.png"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AAAA",
                        "detail": "high",
                    },
                ],
            }
        )
    ) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.test/a.png", "detail": "auto"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"},
                },
            ],
        }
    ]


def test_consecutive_function_calls_merge_into_one_assistant_message() -> None:
    assert input_messages(
        items(
            {"role": "user", "content": "Weather and time in Paris?"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "function_call",
                "call_id": "call_w",
                "name": "weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call", "call_id": "call_t", "name": "time", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_n", "name": "news", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_t", "output": "12:00"},
            {"type": "function_call_output", "call_id": "call_w", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "call_n",
                "output": [{"type": "input_text", "text": "quiet day"}],
            },
        )
    ) == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_w", "weather", '{"city": "Paris"}'),
                call("call_t", "time"),
                call("call_n", "news"),
            ],
        },
        tool_message("call_t", "12:00"),
        tool_message("call_w", "sunny"),
        tool_message("call_n", "quiet day"),
    ]


def test_function_calls_join_the_assistant_message_before_them() -> None:
    assert input_messages(
        items(
            {"role": "user", "content": "Time?"},
            {"role": "assistant", "content": "Let me check."},
            {"type": "function_call", "call_id": "call_t", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_t", "output": "12:00"},
            {"type": "function_call", "call_id": "call_d", "name": "date", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_d", "output": "Monday"},
            {"role": "assistant", "content": "It is 12:00 on Monday."},
        )
    ) == [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("call_t", "time")]},
        tool_message("call_t", "12:00"),
        {"role": "assistant", "content": None, "tool_calls": [call("call_d", "date")]},
        tool_message("call_d", "Monday"),
        {"role": "assistant", "content": "It is 12:00 on Monday."},
    ]


def test_mcp_call_items_become_an_assistant_call_and_its_tool_result() -> None:
    assert input_messages(
        items(
            {"role": "user", "content": "Search twice."},
            {
                "type": "mcp_call",
                "id": "mcp_call_a",
                "server_label": SERVER_LABEL,
                "name": "search",
                "arguments": '{"q": "cats"}',
                "output": "3 cats",
                "error": None,
                "status": "completed",
            },
            {
                "type": "mcp_call",
                "id": "mcp_call_b",
                "server_label": SERVER_LABEL,
                "name": "search",
                "arguments": '{"q": "dogs"}',
                "output": None,
                "error": {
                    "type": "mcp_tool_execution_error",
                    "content": [{"type": "text", "text": "index offline"}],
                },
                "status": "failed",
            },
            {
                "type": "mcp_call",
                "id": "mcp_call_c",
                "server_label": SERVER_LABEL,
                "name": "fetch",
                "arguments": "{}",
                "output": None,
                "error": {"type": "http_error", "code": 503, "message": "unavailable"},
                "status": "failed",
            },
        )
    ) == [
        {"role": "user", "content": "Search twice."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("mcp_call_a", "search", '{"q": "cats"}')],
        },
        tool_message("mcp_call_a", "3 cats"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("mcp_call_b", "search", '{"q": "dogs"}')],
        },
        tool_message("mcp_call_b", "Error: index offline"),
        {"role": "assistant", "content": None, "tool_calls": [call("mcp_call_c", "fetch")]},
        tool_message("mcp_call_c", "Error: unavailable"),
    ]


def test_input_messages_pass_their_own_check() -> None:
    messages = input_messages(
        items(
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "call_a", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "1"},
            {"type": "mcp_call", "id": "mcp_x", "name": "g", "arguments": "{}", "output": "2"},
        )
    )
    assert conversation_problem(messages, "lenient") is None


# -- tool_error_text ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (None, ""),
        ({"message": "timed out"}, "Error: timed out"),
        ({"type": "http_error", "code": 500, "message": "boom"}, "Error: boom"),
        (
            {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": "bad"}]},
            "Error: bad",
        ),
        ("plain words", "Error: plain words"),
    ],
)
def test_tool_error_text(error: Any, text: str) -> None:
    assert tool_error_text(error) == text


# -- chain_messages -------------------------------------------------------------


def test_tool_results_follow_their_call_in_the_models_order_matched_by_call_id() -> None:
    calls = (
        call("call_a", "weather", '{"city": "Paris"}'),
        call("call_b", "time"),
        call("call_c", "news"),
    )
    chain = [
        model_step(0, calls=calls, content="Checking.", reasoning="need three tools"),
        tool_step(1, "call_c", "news", output="quiet day"),
        tool_step(2, "call_a", "weather", output="sunny"),
        tool_step(3, "call_b", "time", output="12:00"),
        model_step(4, content="Sunny, 12:00, quiet."),
    ]
    assert chain_messages(chain) == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": list(calls),
            "reasoning_content": "need three tools",
        },
        tool_message("call_a", "sunny"),
        tool_message("call_b", "12:00"),
        tool_message("call_c", "quiet day"),
        {"role": "assistant", "content": "Sunny, 12:00, quiet."},
    ]


def test_chain_messages_leave_the_stored_message_untouched() -> None:
    step = model_step(0, content="Hi.", reasoning="thinking")
    messages = chain_messages([step])
    assert messages == [{"role": "assistant", "content": "Hi.", "reasoning_content": "thinking"}]
    # the upstream gets the reasoning only where its dialect replays it
    assert finalize_messages(messages) == [{"role": "assistant", "content": "Hi."}]
    assert finalize_messages(messages, reasoning_key="reasoning") == [
        {"role": "assistant", "content": "Hi.", "reasoning": "thinking"}
    ]
    assert messages[0]["reasoning_content"] == "thinking"
    assert step.response is not None
    assert step.response["message"] == {
        "role": "assistant",
        "content": "Hi.",
        "reasoning_content": "thinking",
    }


@pytest.mark.parametrize(
    ("state", "error", "text"),
    [
        (StepState.FAILED, {"message": "HTTP 503", "code": "tool_error"}, "Error: HTTP 503"),
        (StepState.FAILED, None, "Error: tool call failed"),
        (StepState.CANCELLED, None, "Error: tool call cancelled"),
    ],
)
def test_failed_tool_step_sends_its_error_text(
    state: StepState, error: dict[str, Any] | None, text: str
) -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"), call("call_b", "time"))),
        tool_step(1, "call_a", "weather", state=state, error=error),
        tool_step(2, "call_b", "time", output="12:00"),
    ]
    assert chain_messages(chain) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_a", "weather"), call("call_b", "time")],
        },
        tool_message("call_a", text),
        tool_message("call_b", "12:00"),
    ]


def test_client_calls_without_a_step_produce_no_tool_message() -> None:
    calls = (call("call_client", "ask_user"), call("call_server", "weather"))
    chain = [model_step(0, calls=calls), tool_step(1, "call_server", "weather", output="rain")]
    assert chain_messages(chain) == [
        {"role": "assistant", "content": None, "tool_calls": list(calls)},
        tool_message("call_server", "rain"),
    ]


def test_unfinished_tool_steps_and_failed_model_calls_send_nothing() -> None:
    calls = (call("call_a", "weather"), call("call_b", "time"))
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_a", "weather", output="sun"),
        tool_step(2, "call_b", "time", state=StepState.PROCESSING),
        model_step(3, state=StepState.FAILED),
    ]
    assert chain_messages(chain) == [
        {"role": "assistant", "content": None, "tool_calls": list(calls)},
        tool_message("call_a", "sun"),
    ]


def test_repeated_call_ids_across_batches_keep_each_batchs_own_result() -> None:
    # some upstreams number call ids per message, so "call_0" comes back every turn
    chain = [
        model_step(0, calls=(call("call_0", "weather", '{"city": "Paris"}'),)),
        tool_step(1, "call_0", "weather", output="sunny in Paris"),
        model_step(2, calls=(call("call_0", "weather", '{"city": "Oslo"}'),)),
        tool_step(3, "call_0", "weather", output="rain in Oslo"),
        model_step(4, content="Paris sunny, Oslo rainy."),
    ]
    assert chain_messages(chain) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_0", "weather", '{"city": "Paris"}')],
        },
        tool_message("call_0", "sunny in Paris"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_0", "weather", '{"city": "Oslo"}')],
        },
        tool_message("call_0", "rain in Oslo"),
        {"role": "assistant", "content": "Paris sunny, Oslo rainy."},
    ]


def test_chain_messages_pass_the_tool_result_check() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"), call("call_b", "time"))),
        tool_step(1, "call_b", "time"),
        tool_step(2, "call_a", "weather"),
    ]
    assert conversation_problem(chain_messages(chain), "lenient") is None


# -- tool results answer the calls before them (the lenient validation) ----------


def orphan(call_id: str) -> str:
    return f"No tool call found for function call output with call_id {call_id}."


def test_check_accepts_results_of_the_latest_assistant_calls() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call("a", "f"), call("b", "g")]},
        tool_message("b", "2"),
        tool_message("a", "1"),
        {"role": "assistant", "content": "done"},
    ]
    assert conversation_problem(messages, "lenient") is None


def test_check_names_a_result_that_answers_no_call() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call("a", "f")]},
        tool_message("a", "1"),
        tool_message("unknown", "2"),
    ]
    assert conversation_problem(messages, "lenient") == orphan("unknown")


def test_check_names_a_result_with_no_assistant_before_it() -> None:
    assert conversation_problem([tool_message("a", "1")], "lenient") == orphan("a")


def test_check_names_a_result_separated_from_its_call_by_a_user_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "assistant", "content": None, "tool_calls": [call("a", "f")]},
        {"role": "user", "content": "wait"},
        tool_message("a", "1"),
    ]
    assert conversation_problem(messages, "lenient") == orphan("a")


def test_check_names_a_result_for_an_older_assistant_message() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [call("a", "f")]},
        tool_message("a", "1"),
        {"role": "assistant", "content": None, "tool_calls": [call("b", "f")]},
        tool_message("a", "again"),
    ]
    assert conversation_problem(messages, "lenient") == orphan("a")


# -- message_item ---------------------------------------------------------------


def test_message_item_shape() -> None:
    assert message_item("msg_1", "Hello.") == {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}],
    }
    assert message_item("msg_2", "", status="in_progress")["status"] == "in_progress"
