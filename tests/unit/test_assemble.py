"""The response object built from stored steps: output items, usage, every required field."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from stepline._protocol.assemble import (
    mcp_call_id,
    mcp_item_state,
    output_items,
    response_object,
    sum_usage,
)
from stepline._protocol.items import message_item
from stepline._protocol.request import parse_request
from stepline._steps import Step, StepKind, StepState
from stepline._tools.registry import SERVER_LABEL

RESPONSE_ID = "resp_test"

#: the fields PROTOCOL.md says every response object carries
REQUIRED_FIELDS = frozenset(
    {
        "id",
        "object",
        "created_at",
        "completed_at",
        "status",
        "incomplete_details",
        "model",
        "previous_response_id",
        "instructions",
        "output",
        "error",
        "tools",
        "tool_choice",
        "truncation",
        "parallel_tool_calls",
        "text",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "top_logprobs",
        "temperature",
        "reasoning",
        "usage",
        "max_output_tokens",
        "max_tool_calls",
        "store",
        "background",
        "service_tier",
        "metadata",
        "safety_identifier",
        "prompt_cache_key",
    }
)


#: the call id of each mcp_call item made by mcp_item (item ids are digests)
CALL_OF_ITEM: dict[str, str] = {}


def mcp_item(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    CALL_OF_ITEM[mcp_call_id(call_id, "step_0")] = call_id
    """An mcp_call item as a model call stores it: arguments known, waiting for its step."""
    return {
        "id": mcp_call_id(call_id, "step_0"),
        "type": "mcp_call",
        "status": "calling",
        "server_label": SERVER_LABEL,
        "name": name,
        "arguments": arguments,
        "output": None,
        "error": None,
    }


def function_call_item(call_id: str, name: str) -> dict[str, Any]:
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": "{}",
    }


def usage(
    input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0
) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
    }


def model_step(
    sequence: int,
    items: list[dict[str, Any]],
    *,
    state: StepState = StepState.COMPLETED,
    step_usage: dict[str, int] | None = None,
    scope: str | None = None,
) -> Step:
    completed = state is StepState.COMPLETED
    return Step(
        id=f"step_{scope or 'top'}_{sequence}",
        response_id=RESPONSE_ID,
        scope=scope,
        previous_step_id=None,
        sequence=sequence,
        kind=StepKind.MODEL_CALL,
        state=state,
        request={"iteration": 1},
        response={
            "message": {"role": "assistant", "content": None},
            "items": items,
            "call_items": {
                CALL_OF_ITEM[item["id"]]: item["id"] for item in items if item["type"] == "mcp_call"
            },
            "usage": step_usage or usage(0, 0),
            "finish_reason": "stop",
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
        id=f"step_top_{sequence}",
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


def filled(
    call_id: str, name: str, *, status: str, output: str | None = None, error: Any = None
) -> dict[str, Any]:
    return {**mcp_item(call_id, name), "status": status, "output": output, "error": error}


# -- output_items -----------------------------------------------------------------


def test_mcp_call_items_take_their_state_from_the_tool_step_by_call_id() -> None:
    reasoning = {
        "id": "rs_1",
        "type": "reasoning",
        "status": "completed",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "four tools"}],
    }
    chain = [
        model_step(
            0,
            [
                reasoning,
                message_item("msg_1", "Checking."),
                mcp_item("call_ok", "weather"),
                mcp_item("call_http", "fetch"),
                mcp_item("call_crash", "search"),
                mcp_item("call_slow", "news"),
                mcp_item("call_stop", "time"),
                function_call_item("call_client", "ask_user"),
            ],
        ),
        # recorded in another order than the model called them
        tool_step(1, "call_slow", "news", state=StepState.PROCESSING),
        tool_step(
            2,
            "call_crash",
            "search",
            state=StepState.FAILED,
            error={"message": "index offline", "code": "tool_error", "status": None},
        ),
        tool_step(3, "call_ok", "weather", output="sunny"),
        tool_step(4, "call_stop", "time", state=StepState.CANCELLED),
        tool_step(
            5,
            "call_http",
            "fetch",
            state=StepState.FAILED,
            error={"message": "HTTP 503", "code": "tool_error", "status": 503},
        ),
    ]
    assert output_items(chain) == [
        reasoning,
        message_item("msg_1", "Checking."),
        filled("call_ok", "weather", status="completed", output="sunny"),
        filled(
            "call_http",
            "fetch",
            status="failed",
            error={"type": "http_error", "code": 503, "message": "HTTP 503"},
        ),
        filled(
            "call_crash",
            "search",
            status="failed",
            error={
                "type": "mcp_tool_execution_error",
                "content": [{"type": "text", "text": "index offline"}],
            },
        ),
        filled("call_slow", "news", status="calling"),
        filled(
            "call_stop",
            "time",
            status="incomplete",
            error={
                "type": "mcp_tool_execution_error",
                "content": [{"type": "text", "text": "tool call cancelled"}],
            },
        ),
        function_call_item("call_client", "ask_user"),
    ]


@pytest.mark.parametrize("state", [StepState.PENDING, StepState.PROCESSING])
def test_mcp_call_of_an_unfinished_step_is_calling(state: StepState) -> None:
    chain = [
        model_step(0, [mcp_item("call_a", "weather")]),
        tool_step(1, "call_a", "weather", state=state),
    ]
    assert output_items(chain) == [filled("call_a", "weather", status="calling")]


def test_mcp_call_without_a_step_yet_is_left_as_stored() -> None:
    chain = [model_step(0, [mcp_item("call_a", "weather")])]
    assert output_items(chain) == [mcp_item("call_a", "weather")]
    assert mcp_item_state(mcp_item("call_a", "weather"), None) == mcp_item("call_a", "weather")


def test_output_spans_model_calls_in_order_and_skips_failed_ones() -> None:
    chain = [
        model_step(0, [mcp_item("call_a", "weather")]),
        tool_step(1, "call_a", "weather", output="rain"),
        model_step(2, [message_item("msg_lost", "half an ans")], state=StepState.FAILED),
        model_step(3, [message_item("msg_2", "It rains.")]),
    ]
    assert output_items(chain) == [
        filled("call_a", "weather", status="completed", output="rain"),
        message_item("msg_2", "It rains."),
    ]


def test_mcp_call_items_of_batches_with_repeated_call_ids_keep_their_own_output() -> None:
    # some upstreams number call ids per message, so "call_0" comes back every turn
    chain = [
        model_step(0, [mcp_item("call_0", "weather", '{"city": "Paris"}')]),
        tool_step(1, "call_0", "weather", output="sunny in Paris"),
        model_step(2, [mcp_item("call_0", "weather", '{"city": "Oslo"}')]),
        tool_step(3, "call_0", "weather", output="rain in Oslo"),
    ]
    assert [
        (item["name"], item["arguments"], item["status"], item["output"])
        for item in output_items(chain)
    ] == [
        ("weather", '{"city": "Paris"}', "completed", "sunny in Paris"),
        ("weather", '{"city": "Oslo"}', "completed", "rain in Oslo"),
    ]


def test_mcp_call_id_is_derived_from_the_step_and_call_and_unique() -> None:
    first = mcp_call_id("call_0_0", "step_a")
    assert first == mcp_call_id("call_0_0", "step_a")  # a resumed run finds its item
    assert first.startswith("mcp_")
    # the upstream's call ids repeat across responses; item ids must not
    assert len({first, mcp_call_id("call_0_0", "step_b"), mcp_call_id("call_0_1", "step_a")}) == 3


# -- sum_usage --------------------------------------------------------------------


def test_sum_usage_adds_every_model_call_of_every_scope() -> None:
    steps = [
        model_step(0, [], step_usage=usage(100, 20, cached=60, reasoning=5)),
        tool_step(1, "call_a", "research"),
        model_step(2, [], step_usage=usage(40, 10, cached=0, reasoning=3), scope="step_top_1"),
        model_step(3, [], step_usage=usage(55, 7, cached=50, reasoning=0), scope="step_top_1"),
        model_step(4, [], step_usage=usage(200, 30, cached=100, reasoning=12)),
        model_step(5, [], state=StepState.PROCESSING),
    ]
    assert sum_usage(steps) == {
        "input_tokens": 395,
        "input_tokens_details": {"cached_tokens": 210, "cache_write_tokens": 0},
        "output_tokens": 67,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 462,
    }


def test_sum_usage_of_nothing_is_all_zero() -> None:
    assert sum_usage([]) == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


# -- response_object ----------------------------------------------------------------


def minimal_response(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "response_id": RESPONSE_ID,
        "created_at": 1_700_000_000.75,
        "request": parse_request({"model": "test-model", "input": "hi"}),
        "status": "in_progress",
        "output": [],
        "usage": None,
    }
    fields.update(overrides)
    return response_object(**fields)


def test_minimal_response_object_has_every_field_with_its_default() -> None:
    assert minimal_response() == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1_700_000_000,
        "completed_at": None,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": "test-model",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }


def test_minimal_response_object_carries_every_required_field() -> None:
    assert minimal_response().keys() >= REQUIRED_FIELDS
    Response.model_validate(minimal_response())


FULL_REQUEST = {
    "model": "test-model",
    "input": "Weather in Paris?",
    "instructions": "Be brief.",
    "tools": [
        {
            "type": "function",
            "name": "ask_user",
            "description": "Ask the user a question.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            "strict": True,
        }
    ],
    "tool_choice": {
        "type": "allowed_tools",
        "mode": "auto",
        "tools": [{"type": "function", "name": "ask_user"}],
    },
    "parallel_tool_calls": False,
    "max_tool_calls": 4,
    "previous_response_id": "resp_before",
    "store": False,
    "background": True,
    "metadata": {"team": "weather"},
    "temperature": 0.3,
    "top_p": 0.9,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "top_logprobs": 2,
    "max_output_tokens": 256,
    "text": {
        "format": {
            "type": "json_schema",
            "name": "answer",
            "schema": {"type": "object", "properties": {"sky": {"type": "string"}}},
            "strict": True,
        },
        "verbosity": "low",
    },
    "reasoning": {"effort": "low", "summary": "concise"},
    "safety_identifier": "user-hash",
    "prompt_cache_key": "weather-v1",
    "truncation": "disabled",
}


def test_full_response_object_echoes_the_request() -> None:
    output = [
        message_item("msg_1", "Checking."),
        filled("call_ok", "weather", status="completed", output="sunny"),
        filled(
            "call_bad",
            "fetch",
            status="failed",
            error={"type": "http_error", "code": 503, "message": "HTTP 503"},
        ),
        filled(
            "call_crash",
            "search",
            status="failed",
            error={
                "type": "mcp_tool_execution_error",
                "content": [{"type": "text", "text": "index offline"}],
            },
        ),
        function_call_item("call_client", "ask_user"),
    ]
    total = sum_usage([model_step(0, [], step_usage=usage(10, 4, cached=2, reasoning=1))])
    response = minimal_response(
        request=parse_request(FULL_REQUEST),
        status="completed",
        output=output,
        usage=total,
        completed_at=1_700_000_009.9,
    )
    assert response == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1_700_000_000,
        "completed_at": 1_700_000_009,
        "status": "completed",
        "background": True,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "max_output_tokens": 256,
        "max_tool_calls": 4,
        "model": "test-model",
        "output": output,
        "parallel_tool_calls": False,
        "previous_response_id": "resp_before",
        "prompt_cache_key": "weather-v1",
        "reasoning": {"effort": "low", "summary": "concise"},
        "safety_identifier": "user-hash",
        "service_tier": "default",
        "store": False,
        "temperature": 0.3,
        "text": {
            "format": {
                "type": "json_schema",
                "name": "answer",
                "schema": {"type": "object", "properties": {"sky": {"type": "string"}}},
                "strict": True,
            },
            "verbosity": "low",
        },
        "tool_choice": {
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "ask_user"}],
        },
        "tools": FULL_REQUEST["tools"],
        "top_logprobs": 2,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
            "output_tokens": 4,
            "output_tokens_details": {"reasoning_tokens": 1},
            "total_tokens": 14,
        },
        "user": None,
        "metadata": {"team": "weather"},
    }
    parsed = Response.model_validate(response)
    assert [item.type for item in parsed.output] == [
        "message",
        "mcp_call",
        "mcp_call",
        "mcp_call",
        "function_call",
    ]
    assert parsed.usage is not None
    assert parsed.usage.total_tokens == 14


@pytest.mark.parametrize(
    ("status", "error", "incomplete_details"),
    [
        ("queued", None, None),
        ("failed", {"code": "server_error", "message": "upstream failed"}, None),
        ("incomplete", None, {"reason": "max_output_tokens"}),
        ("cancelled", None, None),
    ],
)
def test_response_object_of_every_status_validates(
    status: str, error: dict[str, Any] | None, incomplete_details: dict[str, Any] | None
) -> None:
    response = minimal_response(
        status=status,
        error=error,
        incomplete_details=incomplete_details,
        usage=sum_usage([]),
    )
    assert response.keys() >= REQUIRED_FIELDS
    parsed = Response.model_validate(response)
    assert (parsed.status, response["error"], response["incomplete_details"]) == (
        status,
        error,
        incomplete_details,
    )


@pytest.mark.parametrize(
    "tool_choice",
    ["none", "required", {"type": "function", "name": "ask_user"}],
)
def test_every_tool_choice_form_is_echoed_and_validates(tool_choice: Any) -> None:
    request = parse_request({**FULL_REQUEST, "tool_choice": tool_choice})
    response = minimal_response(request=request)
    assert response["tool_choice"] == tool_choice
    Response.model_validate(response)
