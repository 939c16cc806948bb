"""The served OpenAPI document (``/openapi.json``): the real request bodies and errors.

The routes read their bodies raw (each is validated by stepline's own parser,
which names the bad ``param`` the way OpenAI does), so FastAPI sees no body and
would document none, while advertising a 422 that never happens. This module
gives the route decorators what they declare instead, and :class:`DocumentedApp`
finishes the document FastAPI generates.

Invariants:

* A body's schema is the pydantic model that validates it (the create body is
  :class:`~stepline._protocol.request.ResponseRequest`, as a client may send it:
  ``input`` and ``conversation`` may be strings, and no ``stepline:`` field,
  which the server sets itself, appears); documenting changes no parsing.
* Every error a route declares is the OpenAI envelope (``ErrorResponse``) with
  the status stepline answers; no operation documents a 422, and FastAPI's
  validation-error schemas are not in the document.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from stepline._protocol.request import InputItem, ResponseRequest

__all__ = [
    "AddConversationItemsBody",
    "ChatCompletionBody",
    "CreateConversationBody",
    "DocumentedApp",
    "ErrorResponse",
    "UpdateConversationBody",
    "errors",
    "include_parameter",
    "json_body",
    "response_body",
    "streamed",
]

_COMPONENTS = "#/components/schemas/{model}"
#: how many items a conversation request may carry (``conversations.MAX_ITEMS``, pinned
#: by a test: this module cannot import the routes that use it)
_MAX_CONVERSATION_ITEMS = 20
_METADATA_KEYS = 16


class ErrorDetail(BaseModel):
    """What went wrong: ``param`` names the bad field, ``code`` is machine-readable."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope: every error stepline answers has this shape."""

    error: ErrorDetail


_Metadata = Annotated[
    dict[str, Annotated[str, Field(max_length=512)]],
    Field(max_length=_METADATA_KEYS, description="Up to 16 pairs; keys of at most 64 characters."),
]
_Items = Annotated[list[InputItem], Field(max_length=_MAX_CONVERSATION_ITEMS)]


class CreateConversationBody(BaseModel):
    """``POST /v1/conversations``: its first items (input items) and metadata."""

    items: _Items | None = None
    metadata: _Metadata | None = None


class UpdateConversationBody(BaseModel):
    """``POST /v1/conversations/{conversation_id}``: the new metadata, whole."""

    metadata: _Metadata | None


class AddConversationItemsBody(BaseModel):
    """``POST /v1/conversations/{conversation_id}/items``: input items to append."""

    items: _Items


class ChatCompletionBody(BaseModel):
    """``POST /v1/chat/completions``: a Chat Completions request, passed to the upstream
    as sent (only ``model`` mapped); any other field goes along."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]]
    stream: bool = False


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The top-level schema of each body model (by name) and every schema they share."""
    models: list[type[BaseModel]] = [
        ResponseRequest,
        CreateConversationBody,
        UpdateConversationBody,
        AddConversationItemsBody,
        ChatCompletionBody,
    ]
    _, top = models_json_schema(
        [(model, "validation") for model in models], ref_template=_COMPONENTS
    )
    shared: dict[str, Any] = _without_server_fields(top["$defs"])
    bodies = {model.__name__: shared.pop(model.__name__) for model in models}
    return bodies, shared


def _without_server_fields(value: Any) -> Any:
    """``value`` without the ``stepline:`` properties a client never sets."""
    if isinstance(value, dict):
        kept = {key: _without_server_fields(item) for key, item in value.items()}
        properties = kept.get("properties")
        if isinstance(properties, dict):
            kept["properties"] = {
                name: field
                for name, field in properties.items()
                if not name.startswith("stepline:")
            }
        return kept
    if isinstance(value, list):
        return [_without_server_fields(item) for item in value]
    return value


_BODIES, _SHARED = _schemas()

_ITEM_REFERENCE = {
    "type": "object",
    "title": "ItemReference",
    "description": "An item of an earlier response of the same key, by its id.",
    "properties": {"type": {"const": "item_reference"}, "id": {"type": "string"}},
    "required": ["id"],
}


def _create_body() -> dict[str, Any]:
    body = copy.deepcopy(_BODIES["ResponseRequest"])
    body["title"] = "CreateResponse"
    properties = body["properties"]
    items = properties["input"]["items"]
    properties["input"] = {
        "anyOf": [
            {"type": "string", "description": "One user message."},
            {"type": "array", "items": {"anyOf": [items, _ITEM_REFERENCE]}},
        ],
        "description": "The input items; a string is one user message.",
    }
    conversation = properties["conversation"]
    properties["conversation"] = {
        "anyOf": [{"type": "string", "minLength": 1}, *conversation["anyOf"]],
        "description": "The conversation (its id, or {id}) whose items come first.",
    }
    return body


_CREATE_BODY = _create_body()


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": copy.deepcopy(schema)}},
        }
    }


def response_body(fields: Sequence[str] | None = None) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is a create body: whole, or only
    ``fields`` of it with only ``model`` required (compact, input_tokens)."""
    if fields is None:
        return _body(_CREATE_BODY)
    properties = _CREATE_BODY["properties"]
    return _body(
        {
            "type": "object",
            "properties": {name: properties[name] for name in fields},
            "required": ["model"],
        }
    )


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body ``model`` (one of this module's) documents."""
    return _body(_BODIES[model.__name__])


def include_parameter() -> dict[str, Any]:
    """``openapi_extra`` of a conversation-items route that reads ``include``."""
    return {
        "parameters": [
            {
                "name": "include",
                "in": "query",
                "required": False,
                "description": "What listed items carry (also sent as include[]).",
                "schema": {"type": "array", "items": {"type": "string"}},
                "style": "form",
                "explode": True,
            }
        ]
    }


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}

#: what each status means on stepline's routes
_STATUSES: dict[int, tuple[str, dict[str, Any] | None]] = {
    400: ("The request is invalid; `param` names the field at fault.", None),
    401: ("No API key was sent, or an unknown one (code `invalid_api_key`).", None),
    403: ("The key may not use this model, these tools or this endpoint.", None),
    404: ("The named object does not exist, or is another key's.", None),
    413: ("The request body is larger than `limits.max_request_bytes`.", None),
    429: ("The key's rate or concurrency limit; retry after `Retry-After`.", _RETRY_AFTER),
    501: ("The server keeps responses in memory, where this is not available.", None),
    502: ("The upstream model (or its tokenizer) failed.", None),
    503: ("The database is unavailable or the server is shutting down; retry shortly.", None),
    504: ("The upstream model did not answer in time.", None),
}


#: one Server-Sent Event: ``event`` is the JSON ``type`` of ``data``; the last event is
#: ``data: [DONE]``
_SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    "required": ["data"],
}


def streamed() -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route that answers Server-Sent Events when asked (``stream``)."""
    return {
        200: {
            "description": "The JSON object; with `stream`, its events as Server-Sent Events.",
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        }
    }


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route: the errors it answers, each in the OpenAI envelope."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _STATUSES[status]
        declared[status] = {"model": ErrorResponse, "description": description}
        if headers is not None:
            declared[status]["headers"] = headers
    return declared


#: FastAPI's own schemas for the 422 it documents by default
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _finish(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the shared body schemas and without any 422."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _VALIDATION_SCHEMAS:
        components.pop(name, None)
    for name, schema in _SHARED.items():
        components.setdefault(name, copy.deepcopy(schema))
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    return document


class DocumentedApp(FastAPI):
    """The FastAPI app whose document has the bodies and errors its routes declare."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = _finish(super().openapi())
        return self.openapi_schema
