"""The served ``/openapi.json`` documents the real request bodies and errors, and holds.

Every test reads the document from a real server over its socket. It must be
valid OpenAPI 3; each ``/v1`` operation documents its JSON body (from the
pydantic models that validate it) and exactly the error statuses it answers,
each in the OpenAI envelope, and none documents FastAPI's 422. Schemathesis
then generates requests from the document (valid and invalid ones) against the
same server: no answer is a 5xx, every status and content type is documented,
and every 4xx body is the envelope.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from stepline._protocol.request import ResponseRequest
from stepline._server.conversations import MAX_ITEMS
from tests.gateway.conftest import Gateway, GatewayFactory

pytestmark = pytest.mark.timeout(120)

#: every /v1 operation: the fields of its JSON body (None: no body), the required
#: ones, and the error statuses it answers
_RESPONSES = "/v1/responses/{response_id}"
_CONVERSATION = "/v1/conversations/{conversation_id}"
_COMPACT = ["model", "input", "previous_response_id", "instructions", "prompt_cache_key"]
_COUNT = [
    *_COMPACT[:4],
    "conversation",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "truncation",
]
_CREATE = sorted(
    (field.alias or name)
    for name, field in ResponseRequest.model_fields.items()
    if not (field.alias or "").startswith("stepline:")
)
_FAN = (400, 401, 403, 404, 413, 429, 502, 503)
EXPECTED: dict[tuple[str, str], tuple[list[str] | None, list[str], tuple[int, ...]]] = {
    ("post", "/v1/responses"): (_CREATE, ["input", "model"], (400, 401, 403, 404, 413, 429, 503)),
    ("get", _RESPONSES): (None, [], (400, 401, 404, 429, 503)),
    ("delete", _RESPONSES): (None, [], (401, 404, 429, 503)),
    ("post", f"{_RESPONSES}/cancel"): (None, [], (400, 401, 404, 429, 503)),
    ("get", f"{_RESPONSES}/input_items"): (None, [], (400, 401, 404, 429, 503)),
    ("post", "/v1/responses/compact"): (sorted(_COMPACT), ["model"], _FAN),
    ("post", "/v1/responses/input_tokens"): (sorted(_COUNT), ["model"], _FAN),
    ("get", "/v1/models"): (None, [], (401, 429)),
    ("post", "/v1/conversations"): (["items", "metadata"], [], (400, 401, 413, 429, 503)),
    ("get", _CONVERSATION): (None, [], (401, 404, 429, 503)),
    ("post", _CONVERSATION): (["metadata"], ["metadata"], (400, 401, 404, 413, 429, 503)),
    ("delete", _CONVERSATION): (None, [], (401, 404, 429, 503)),
    ("post", f"{_CONVERSATION}/items"): (["items"], ["items"], (400, 401, 404, 413, 429, 503)),
    ("get", f"{_CONVERSATION}/items"): (None, [], (400, 401, 404, 429, 503)),
    ("get", f"{_CONVERSATION}/items/{{item_id}}"): (None, [], (400, 401, 404, 429, 503)),
    ("delete", f"{_CONVERSATION}/items/{{item_id}}"): (None, [], (401, 404, 429, 503)),
    ("post", "/v1/chat/completions"): (
        ["messages", "model", "stream"],
        ["messages", "model"],
        (400, 401, 403, 413, 429, 502, 504),
    ),
    ("get", "/v1/usage"): (None, [], (400, 401, 403, 429, 501, 503)),
}
ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}


async def _started(gateway_factory: GatewayFactory) -> tuple[Gateway, dict[str, Any]]:
    """A server with one (admin) key, and its document, read without a key."""
    gateway: Gateway = await gateway_factory(keys={"ops": {"admin": True}})
    reply = await gateway.http.get("/openapi.json")
    assert reply.status_code == 200
    document: dict[str, Any] = reply.json()
    return gateway, document


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    }


def _body_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    body = operation.get("requestBody")
    if body is None:
        return None
    assert body["required"] is True
    assert list(body["content"]) == ["application/json"]
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of ``schema`` whose ``#/components/...`` references ``document`` holds."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


async def test_the_served_document_is_valid_openapi_3(gateway_factory: GatewayFactory) -> None:
    _, document = await _started(gateway_factory)

    validate(document)  # raises on any violation of the OpenAPI 3.1 schema, dangling $refs too
    assert document["openapi"].startswith("3.")


async def test_every_v1_route_documents_its_body_and_its_errors(
    gateway_factory: GatewayFactory,
) -> None:
    _, document = await _started(gateway_factory)
    operations = _operations(document)

    assert set(operations) == set(EXPECTED)
    for key, operation in operations.items():
        fields, required, statuses = EXPECTED[key]
        schema = _body_schema(operation)
        if fields is None:
            assert schema is None, key
        else:
            assert schema is not None, key
            assert sorted(schema["properties"]) == fields, key
            assert sorted(schema.get("required", [])) == required, key
        errors = {code: reply for code, reply in operation["responses"].items() if code != "200"}
        assert sorted(map(int, errors)) == list(statuses), key
        for code, reply in errors.items():
            assert reply["content"] == {"application/json": {"schema": ENVELOPE}}, (key, code)
            assert reply["description"], (key, code)
        assert "Retry-After" in errors["429"]["headers"]


async def test_no_operation_documents_a_validation_error(gateway_factory: GatewayFactory) -> None:
    _, document = await _started(gateway_factory)

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert "ValidationError" not in document["components"]["schemas"]
    envelope = document["components"]["schemas"]["ErrorResponse"]
    detail = document["components"]["schemas"][envelope["properties"]["error"]["$ref"][21:]]
    assert sorted(detail["required"]) == ["code", "message", "param", "type"]


async def test_the_create_body_takes_what_clients_send_and_nothing_the_server_sets(
    gateway_factory: GatewayFactory,
) -> None:
    _, document = await _started(gateway_factory)
    schema = _body_schema(_operations(document)[("post", "/v1/responses")])
    assert schema is not None
    validator = _validator(document, schema)
    accepted = [
        {"model": "m", "input": "hi"},
        {
            "model": "m",
            "input": [
                {"type": "message", "role": "user", "content": "hi"},
                {"type": "item_reference", "id": "msg_1"},
            ],
            "conversation": "conv_1",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "stream": True,
        },
        {"model": "m", "input": [], "conversation": {"id": "conv_1"}, "background": True},
    ]
    refused = [
        {"input": "hi"},
        {"model": "m"},
        {"model": "m", "input": "hi", "temperature": 3},
        {"model": "m", "input": "hi", "truncation": "sometimes"},
        {"model": "m", "input": [{"type": "no_such_item"}]},
    ]
    for body in accepted:
        assert not list(validator.iter_errors(body)), body
    for body in refused:
        assert list(validator.iter_errors(body)), body
    text = str(document)
    assert "stepline:" not in text  # the server's own fields are never offered to clients


async def test_conversation_bodies_carry_the_server_s_item_limit(
    gateway_factory: GatewayFactory,
) -> None:
    _, document = await _started(gateway_factory)
    operations = _operations(document)

    for key in (("post", "/v1/conversations"), ("post", f"{_CONVERSATION}/items")):
        schema = _body_schema(operations[key])
        assert schema is not None
        items = schema["properties"]["items"]
        array = next(option for option in items.get("anyOf", [items]) if "maxItems" in option)
        assert array["maxItems"] == MAX_ITEMS, key


async def test_every_route_answers_a_missing_key_with_its_documented_401(
    gateway_factory: GatewayFactory,
) -> None:
    gateway, document = await _started(gateway_factory)
    envelope = _validator(document, ENVELOPE)

    for (method, path), operation in _operations(document).items():
        url = path.format(response_id="resp_x", conversation_id="conv_x", item_id="msg_x")
        reply = await gateway.http.request(
            method, url, json={} if "requestBody" in operation else None
        )
        assert reply.status_code == 401, (method, path)
        assert "401" in operation["responses"]
        assert not list(envelope.iter_errors(reply.json())), reply.json()


async def test_an_unknown_field_no_header_can_carry_is_named_escaped(
    gateway_factory: GatewayFactory,
) -> None:
    """Found by the fuzzing below: a field name outside latin-1 made the reply a 500
    (after the response was accepted); it is named as an ASCII JSON string instead."""
    gateway, _ = await _started(gateway_factory)
    model = gateway.script("hello", [{"content": "hi"}])

    reply = await gateway.http.post(
        "/v1/responses",
        json={"model": model, "input": "hi", "plain": 1, "\u00fcnknown\n\U000f4d36": 2},
        headers=gateway.auth("ops"),
    )

    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "completed"
    assert reply.headers["stepline-ignored-fields"] == 'plain, "\\u00fcnknown\\n\\udb93\\udd36"'


@schemathesis.check
def error_envelope(ctx: CheckContext, response: schemathesis.Response, case: Case[Any]) -> None:
    """Every 4xx is the OpenAI envelope, naming a message and a type."""
    if 400 <= response.status_code < 500:
        body = response.json()
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and error["message"], body
        assert isinstance(error["type"], str) and error["type"], body


_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]
#: (path, method, examples per generation mode): the create route most of all
_FUZZED = [
    ("/v1/responses", "POST", 120),
    ("/v1/responses/compact", "POST", 30),
    ("/v1/conversations", "POST", 30),
    ("/v1/responses/{response_id}", "GET", 30),
    ("/v1/conversations/{conversation_id}/items", "GET", 20),
]


def _fuzz(url: str, token: str, path: str, method: str, examples: int) -> dict[int, int]:
    """Run schemathesis on one operation (valid, then invalid requests); the statuses seen."""
    operation = schemathesis.openapi.from_url(f"{url}/openapi.json")[path][method]
    seen: dict[int, int] = {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Case[Any]) -> None:
            response = case.call(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=_CHECKS)

        run()
    return seen


async def test_schemathesis_finds_no_server_error_and_only_documented_answers(
    gateway_factory: GatewayFactory,
) -> None:
    gateway, _ = await _started(gateway_factory)
    started = time.monotonic()
    seen: dict[str, dict[int, int]] = {}
    for path, method, examples in _FUZZED:
        # the server runs on this loop; schemathesis calls it from a thread
        seen[f"{method} {path}"] = await asyncio.to_thread(
            _fuzz, gateway.url, gateway.tokens["ops"], path, method, examples
        )
    # valid bodies were accepted and invalid ones refused, not only one of the two
    assert seen["POST /v1/responses"].get(200, 0) > 0, seen
    assert seen["POST /v1/responses"].get(400, 0) > 0, seen
    assert time.monotonic() - started < 60
    # the server is still up and answering
    assert (await gateway.http.get("/v1/models", headers=gateway.auth("ops"))).status_code == 200
