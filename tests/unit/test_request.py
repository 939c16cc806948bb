"""``parse_request``: what a ``POST /v1/responses`` body may hold and which param a 400 names."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from stepline._protocol.request import (
    FunctionCallItem,
    FunctionCallOutputItem,
    McpCallItem,
    MessageItem,
    ReasoningItem,
    ToolChoiceFunction,
    allowed_tool_names,
    new_id,
    parse_request,
    unknown_fields,
)
from stepline.errors import InvalidRequest


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "test-model", "input": "hi", **fields}


def refusal(raw: bytes | dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw)
    return caught.value


def dumped_input(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [item.model_dump(by_alias=True) for item in parse_request(raw).input]


def test_new_id_is_a_prefix_and_32_hex_characters() -> None:
    assert re.fullmatch(r"resp_[0-9a-f]{32}", new_id("resp"))
    assert new_id("resp") != new_id("resp")


# -- input --------------------------------------------------------------------


def test_string_input_becomes_one_user_message_with_an_id() -> None:
    request = parse_request(body(input="What time is it?"))
    [item] = dumped_input(body(input="What time is it?"))
    assert re.fullmatch(r"msg_[0-9a-f]{32}", item.pop("id"))
    assert item == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "What time is it?"}],
    }
    assert isinstance(request.input[0], MessageItem)


def test_bytes_body_is_decoded() -> None:
    request = parse_request(orjson.dumps(body(input="hello")))
    assert request.model == "test-model"
    assert [item.model_dump()["content"] for item in request.input] == [
        [{"type": "input_text", "text": "hello"}]
    ]


def test_every_input_item_type_is_accepted_and_kept() -> None:
    items: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": "msg_1",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": "https://example.test/cat.png"},
            ],
        },
        {"id": "msg_2", "role": "developer", "content": "Answer briefly."},
        {
            "type": "message",
            "id": "msg_3",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "A cat.", "annotations": []}],
            "status": "completed",
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_time",
            "arguments": '{"tz": "UTC"}',
            "status": "completed",
        },
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "12:00"},
        {
            "type": "mcp_call",
            "id": "mcp_call_2",
            "server_label": "stepline",
            "name": "search",
            "arguments": '{"q": "cats"}',
            "output": "many cats",
            "error": None,
            "status": "completed",
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": []},
    ]
    request = parse_request(body(input=items))
    assert [type(item) for item in request.input] == [
        MessageItem,
        MessageItem,
        MessageItem,
        FunctionCallItem,
        FunctionCallOutputItem,
        McpCallItem,
        ReasoningItem,
    ]
    # as stored: what was sent, nothing added
    assert [item.model_dump(by_alias=True, exclude_unset=True) for item in request.input] == [
        {
            "type": "message",
            "id": "msg_1",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": "https://example.test/cat.png"},
            ],
        },
        {"type": "message", "id": "msg_2", "role": "developer", "content": "Answer briefly."},
        {
            "type": "message",
            "id": "msg_3",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "A cat.", "annotations": []}],
            "status": "completed",
        },
        items[3],
        items[4],
        items[5],
        items[6],
    ]


def test_items_without_an_id_get_one_named_after_their_type() -> None:
    items = [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        {"type": "mcp_call", "name": "search", "arguments": "{}"},
        {"type": "reasoning", "summary": []},
    ]
    ids = [item["id"] for item in dumped_input(body(input=items))]
    assert [re.sub(r"_[0-9a-f]{32}$", "_<hex>", item_id) for item_id in ids] == [
        "msg_<hex>",
        "fc_<hex>",
        "fco_<hex>",
        "item_<hex>",
        "item_<hex>",
    ]
    assert len(set(ids)) == len(ids)


def test_easy_message_without_type_is_a_message() -> None:
    assert dumped_input(body(input=[{"role": "user", "content": "hi", "id": "msg_x"}])) == [
        {"type": "message", "role": "user", "content": "hi", "id": "msg_x"}
    ]


def test_normalising_input_leaves_the_callers_dict_untouched() -> None:
    item = {"role": "user", "content": "hi"}
    parse_request(body(input=[item]))
    assert item == {"role": "user", "content": "hi"}


# -- refusals and the param they name -----------------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        pytest.param(b"{not json", "body", id="bad-json"),
        pytest.param(b'["a list"]', "body", id="json-list"),
        pytest.param(b'"a string"', "body", id="json-string"),
        pytest.param({"model": "test-model"}, "input", id="missing-input"),
        pytest.param({"input": "hi"}, "model", id="missing-model"),
        pytest.param(body(model=""), "model", id="empty-model"),
        pytest.param(body(input=42), "input", id="input-not-a-list"),
        pytest.param(body(temperature=2.5), "temperature", id="temperature-high"),
        pytest.param(body(temperature=-0.1), "temperature", id="temperature-low"),
        pytest.param(body(top_p=1.5), "top_p", id="top-p-high"),
        pytest.param(body(max_output_tokens=0), "max_output_tokens", id="max-output-zero"),
        pytest.param(body(max_tool_calls=0), "max_tool_calls", id="max-tool-calls-zero"),
        pytest.param(body(tool_choice="sometimes"), "tool_choice", id="tool-choice-word"),
        pytest.param(
            body(tools=[{"type": "function", "name": "has space"}]),
            "tools[0].name",
            id="tool-name-pattern",
        ),
        pytest.param(
            body(input=[{"type": "function_call_output", "call_id": "c", "output": 42}]),
            "input[0].output",
            id="function-call-output-not-text",
        ),
        pytest.param(
            body(
                tools=[
                    {"type": "function", "name": "lookup"},
                    {"type": "function", "name": "lookup"},
                ]
            ),
            "tools",
            id="duplicate-tool-names",
        ),
        pytest.param(body(tools=[{"type": "teleport"}]), "tools[0].type", id="unknown-tool"),
        pytest.param(
            body(tools=[{"type": "function", "name": "a"}, {"type": "teleport"}]),
            "tools[1].type",
            id="second-tool-unknown",
        ),
        pytest.param(
            body(conversation="conv_1", previous_response_id="resp_1"),
            "conversation",
            id="conversation-and-previous-response",
        ),
        pytest.param(body(conversation={"name": "x"}), "conversation.id", id="conversation-no-id"),
        pytest.param(body(prompt={"id": "pmpt_1"}), "prompt", id="prompt"),
        pytest.param(
            body(context_management=[{"type": "compaction"}]),
            "context_management[0].compact_threshold",
            id="context-management-without-threshold",
        ),
        pytest.param(body(truncation="sometimes"), "truncation", id="truncation-unknown"),
        pytest.param(body(include=["file.everything"]), "include[0]", id="include-unknown"),
        pytest.param(
            body(input=[{"type": "item_reference", "id": "msg_gone"}]),
            "input[0].id",
            id="unresolved-reference",
        ),
        pytest.param(
            body(
                tools=[{"type": "function", "name": "lookup"}],
                tool_choice={"type": "function", "name": "other"},
            ),
            "tool_choice",
            id="tool-choice-unknown-function",
        ),
        pytest.param(
            body(metadata={f"key{n}": "v" for n in range(17)}), "metadata", id="metadata-17-keys"
        ),
        pytest.param(body(metadata={"k" * 65: "v"}), "metadata", id="metadata-long-key"),
        pytest.param(body(metadata={"k": "v" * 513}), "metadata", id="metadata-long-value"),
        pytest.param(
            body(input=[{"type": "function_call", "call_id": "", "name": "f", "arguments": "{}"}]),
            "input[0].call_id",
            id="empty-call-id",
        ),
        pytest.param(
            body(input=[{"type": "message", "role": "robot", "content": "x"}]),
            "input[0].role",
            id="unknown-role",
        ),
    ],
)
def test_refusal_names_the_param(raw: bytes | dict[str, Any], param: str) -> None:
    error = refusal(raw)
    assert error.param == param
    assert error.status_code == 400
    assert error.to_envelope() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }


def test_missing_input_says_so() -> None:
    assert refusal({"model": "test-model"}).message == "Missing required parameter: 'input'."


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        pytest.param(body(input=[{"type": "speech", "text": "x"}]), "input[0]", id="item-type"),
        pytest.param(
            body(
                input=[
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": [{"type": "input_audio", "data": "..."}]},
                ]
            ),
            "input[1]",
            id="content-part-type",
        ),
        pytest.param(
            body(input=[{"role": "user", "content": [{"type": "input_image"}]}]),
            "input[0]",
            id="image-without-url",
        ),
        pytest.param(
            body(text={"format": {"type": "json_schema", "name": "answer"}}),
            "text",
            id="json-schema-without-schema",
        ),
        pytest.param(
            body(text={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
            "text",
            id="json-schema-without-name",
        ),
    ],
)
def test_refusal_param_points_into_the_bad_field(raw: dict[str, Any], prefix: str) -> None:
    param = refusal(raw).param
    assert param is not None
    assert param.startswith(prefix)


@pytest.mark.parametrize(
    ("raw", "prefix", "words"),
    [
        pytest.param(
            body(
                input=[
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": [{"type": "input_audio", "data": "..."}]},
                ]
            ),
            "input[1].content[0]",
            "input_audio",
            id="content-part-unknown-type",
        ),
        pytest.param(
            body(
                input=[
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": [{"type": "input_image"}]},
                ]
            ),
            "input[1].content[0]",
            "image_url",
            id="content-part-image-without-url",
        ),
        pytest.param(
            body(
                tool_choice={
                    "type": "allowed_tools",
                    "mode": "sometimes",
                    "tools": [{"type": "function", "name": "a"}],
                }
            ),
            "tool_choice.mode",
            "'auto' or 'required'",
            id="allowed-tools-mode",
        ),
    ],
)
def test_refusal_explains_the_branch_the_value_took(
    raw: dict[str, Any], prefix: str, words: str
) -> None:
    # a list content (or an object tool_choice) must be refused for what is wrong
    # inside it, not with "should be a valid string" / "should be 'auto', 'none'..."
    error = refusal(raw)
    assert error.param is not None
    assert error.param.startswith(prefix)
    assert words in error.message


def test_unknown_item_type_is_refused_at_that_item_only() -> None:
    error = refusal(body(input=[{"role": "user", "content": "fine"}, {"type": "speech"}]))
    assert error.param is not None
    assert error.param.startswith("input[1]")


# -- what is accepted ---------------------------------------------------------


def test_unknown_top_level_fields_are_ignored_and_named() -> None:
    sent = body(frobnicate=True, include=["reasoning.encrypted_content"], client_metadata={"a": 1})
    request = parse_request(sent)
    assert request.model == "test-model"
    assert "frobnicate" not in request.model_dump()
    assert unknown_fields(sent) == ["frobnicate"]
    assert request.client_metadata == {"a": 1}
    assert request.includes("reasoning.encrypted_content")


def test_boundary_values_are_accepted() -> None:
    request = parse_request(
        body(
            temperature=2,
            top_p=0,
            metadata={f"key{n}": "v" * 512 for n in range(16)},
            max_tool_calls=1,
        )
    )
    assert (request.temperature, request.top_p, request.max_tool_calls) == (2, 0, 1)
    assert request.metadata is not None
    assert len(request.metadata) == 16


def test_defaults_of_a_minimal_request() -> None:
    request = parse_request(body())
    assert request.model_dump(exclude={"input"}, by_alias=True) == {
        "model": "test-model",
        "instructions": None,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "max_tool_calls": None,
        "previous_response_id": None,
        "conversation": None,
        "store": True,
        "stream": False,
        "background": False,
        "metadata": None,
        "temperature": None,
        "top_p": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "top_logprobs": None,
        "max_output_tokens": None,
        "text": {
            "format": {
                "type": "text",
                "name": None,
                "schema": None,
                "strict": None,
                "description": None,
            },
            "verbosity": None,
        },
        "reasoning": None,
        "user": None,
        "safety_identifier": None,
        "prompt_cache_key": None,
        "service_tier": None,
        "truncation": "disabled",
        "context_management": None,
        "include": [],
        "client_metadata": None,
        "stream_options": None,
        "stepline:reasoning_events": None,
        "stepline:history_inline": False,
    }


def test_json_schema_format_with_name_and_schema_is_accepted() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = parse_request(
        body(text={"format": {"type": "json_schema", "name": "answer", "schema": schema}})
    )
    assert request.text.format.schema_ == schema
    assert request.text.format.name == "answer"


def test_tool_choice_naming_a_known_function_is_accepted() -> None:
    request = parse_request(
        body(
            tools=[{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
            tool_choice={"type": "function", "name": "lookup"},
        )
    )
    assert isinstance(request.tool_choice, ToolChoiceFunction)
    assert request.tool_choice.model_dump() == {"type": "function", "name": "lookup"}


# -- allowed_tool_names -------------------------------------------------------


@pytest.mark.parametrize(
    "tool_choice",
    ["auto", "none", "required", {"type": "function", "name": "lookup"}],
)
def test_allowed_tool_names_is_none_unless_allowed_tools(tool_choice: Any) -> None:
    tools = [{"type": "function", "name": "lookup"}, {"type": "function", "name": "other"}]
    request = parse_request(body(tools=tools, tool_choice=tool_choice))
    assert allowed_tool_names(request) is None


def test_allowed_tool_names_lists_the_allowed_tools() -> None:
    request = parse_request(
        body(
            tools=[{"type": "function", "name": "lookup"}],
            tool_choice={
                "type": "allowed_tools",
                "mode": "required",
                "tools": [
                    {"type": "function", "name": "lookup"},
                    {"type": "function", "name": "weather"},
                ],
            },
        )
    )
    assert allowed_tool_names(request) == frozenset({"lookup", "weather"})
