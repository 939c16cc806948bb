"""The Conversations API: ``/v1/conversations`` and its items, and a response's ``conversation``.

A conversation is a list of items kept by the store; it belongs to the key
that created it, and any other key is told it does not exist (404), on these
routes and as the ``conversation`` of a response. Items are read as input
items when they come in (the same parser as a response's ``input``, so a
conversation holds only what a response can take as context) and listed in
the shapes the OpenAI SDK reads.

Invariants:

* Every refusal is a 4xx in the OpenAI error envelope naming its ``param``.
* At most :data:`MAX_ITEMS` items are added per request, as on OpenAI.
* :func:`pin_conversation` fixes, when a response is accepted, which of its
  conversation's items it sees: those stored before it (the response's own
  items join when it ends, after whatever ended before it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from stepline._protocol.request import INCLUDABLE, ResponseRequest, load_body, new_id, parse_request
from stepline._run.conversation import conversation_items
from stepline._server.auth import Caller, caller_of
from stepline._server.openapi import (
    AddConversationItemsBody,
    CreateConversationBody,
    UpdateConversationBody,
    errors,
    include_parameter,
    json_body,
)
from stepline._server.replies import JSON
from stepline._server.runner import Runner
from stepline.errors import InvalidRequest, NotFound
from stepline.store._base import ConversationItem, ConversationRecord, StepStore

__all__ = ["MAX_ITEMS", "pin_conversation", "router"]

router = APIRouter(prefix="/v1")

#: items one create or add request may carry
MAX_ITEMS = 20


def _store(request: Request) -> StepStore:
    runner: Runner = request.app.state.runner
    return runner.engine.store


async def _owned(
    store: StepStore, conversation_id: str, caller: Caller, *, param: str = "conversation_id"
) -> ConversationRecord:
    record = await store.get_conversation(conversation_id)
    if record is None or not caller.owns(record.key_id):
        raise NotFound(f"Conversation with id '{conversation_id}' not found.", param=param)
    return record


async def pin_conversation(
    store: StepStore, request: ResponseRequest, caller: Caller
) -> ResponseRequest:
    """``request`` seeing its conversation as it is now; NotFound when the conversation
    does not exist or is another key's."""
    if request.conversation is None:
        return request
    record = await _owned(store, request.conversation.id, caller, param="conversation")
    pinned = request.conversation.model_copy(update={"upto": record.next_position})
    return request.model_copy(update={"conversation": pinned})


def _conversation(record: ConversationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "conversation",
        "created_at": int(record.created_at),
        "metadata": record.metadata,
    }


def _page(items: list[ConversationItem], *, has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [item.data for item in items],
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
        "has_more": has_more,
    }


def _metadata(value: Any) -> dict[str, str]:
    """Up to 16 string pairs, keys of at most 64 characters and values of at most 512."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(text, str) for key, text in value.items()
    ):
        raise InvalidRequest("metadata must be an object of string values", param="metadata")
    if len(value) > 16:
        raise InvalidRequest("metadata may have at most 16 keys", param="metadata")
    if any(len(key) > 64 or len(text) > 512 for key, text in value.items()):
        raise InvalidRequest(
            "metadata keys are at most 64 characters, values 512", param="metadata"
        )
    return dict(value)


def _items(value: Any) -> list[dict[str, Any]]:
    """Input items, validated and given ids as a response's ``input`` is."""
    if not isinstance(value, list):
        raise InvalidRequest("items must be an array of items", param="items")
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(
            f"items has {len(value)} entries; add at most {MAX_ITEMS} at a time", param="items"
        )
    try:
        parsed = parse_request({"model": "conversation", "input": value})
    except InvalidRequest as exc:
        param = exc.param or "items"
        raise InvalidRequest(
            exc.message.replace("'input", "'items"),
            param="items" + param.removeprefix("input") if param.startswith("input") else param,
        ) from None
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)["input"]
    return conversation_items(dumped)


def _include(request: Request) -> list[str]:
    """``include`` values (the OpenAI SDK sends ``include[]=...``); any unknown one is a 400.

    Items are listed as they were stored, with what their responses included."""
    values = [*request.query_params.getlist("include"), *request.query_params.getlist("include[]")]
    for index, value in enumerate(values):
        if value not in INCLUDABLE:
            raise InvalidRequest(
                f"include value {value!r} is not supported; stepline supports "
                + ", ".join(sorted(INCLUDABLE)),
                param=f"include[{index}]",
            )
    return values


@router.post(
    "/conversations",
    responses=errors(400, 401, 413, 429, 503),
    openapi_extra=json_body(CreateConversationBody),
)
async def create_conversation(request: Request) -> Response:
    body = load_body(await request.body())
    metadata = _metadata(body.get("metadata"))
    items = _items(body["items"]) if body.get("items") is not None else []
    caller = caller_of(request)
    record = ConversationRecord(
        id=new_id("conv"),
        created_at=request.app.state.runner.engine.clock(),
        metadata=metadata,
        key_id=caller.key_id,
    )
    await _store(request).create_conversation(record, items)
    return JSON(_conversation(record))


@router.get("/conversations/{conversation_id}", responses=errors(401, 404, 429, 503))
async def get_conversation(request: Request, conversation_id: str) -> Response:
    record = await _owned(_store(request), conversation_id, caller_of(request))
    return JSON(_conversation(record))


@router.post(
    "/conversations/{conversation_id}",
    responses=errors(400, 401, 404, 413, 429, 503),
    openapi_extra=json_body(UpdateConversationBody),
)
async def update_conversation(request: Request, conversation_id: str) -> Response:
    store = _store(request)
    await _owned(store, conversation_id, caller_of(request))
    body = load_body(await request.body())
    if "metadata" not in body:
        raise InvalidRequest("Missing required parameter: 'metadata'.", param="metadata")
    updated = await store.update_conversation(conversation_id, metadata=_metadata(body["metadata"]))
    if updated is None:  # deleted meanwhile
        raise NotFound(
            f"Conversation with id '{conversation_id}' not found.", param="conversation_id"
        )
    return JSON(_conversation(updated))


@router.delete("/conversations/{conversation_id}", responses=errors(401, 404, 429, 503))
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    store = _store(request)
    await _owned(store, conversation_id, caller_of(request))
    await store.delete_conversation(conversation_id)
    return JSON({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.post(
    "/conversations/{conversation_id}/items",
    responses=errors(400, 401, 404, 413, 429, 503),
    openapi_extra={**json_body(AddConversationItemsBody), **include_parameter()},
)
async def add_items(request: Request, conversation_id: str) -> Response:
    store = _store(request)
    await _owned(store, conversation_id, caller_of(request))
    _include(request)
    body = load_body(await request.body())
    if "items" not in body:
        raise InvalidRequest("Missing required parameter: 'items'.", param="items")
    added = await store.append_conversation_items(conversation_id, _items(body["items"]))
    if added is None:  # deleted meanwhile
        raise NotFound(
            f"Conversation with id '{conversation_id}' not found.", param="conversation_id"
        )
    return JSON(_page(added))


@router.get(
    "/conversations/{conversation_id}/items",
    responses=errors(400, 401, 404, 429, 503),
    openapi_extra=include_parameter(),
)
async def list_items(
    request: Request,
    conversation_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    store = _store(request)
    await _owned(store, conversation_id, caller_of(request))
    _include(request)
    start: int | None = None
    if after is not None:
        anchor = await store.get_conversation_item(conversation_id, after)
        if anchor is None:
            raise InvalidRequest(f"No item with id '{after}' in this conversation.", param="after")
        start = anchor.position
    descending = order == "desc"
    found = await store.list_conversation_items(
        conversation_id,
        after=None if descending else start,
        before=start if descending else None,
        limit=limit + 1,
        descending=descending,
    )
    return JSON(_page(found[:limit], has_more=len(found) > limit))


@router.get(
    "/conversations/{conversation_id}/items/{item_id}",
    responses=errors(400, 401, 404, 429, 503),
    openapi_extra=include_parameter(),
)
async def get_item(request: Request, conversation_id: str, item_id: str) -> Response:
    store = _store(request)
    await _owned(store, conversation_id, caller_of(request))
    _include(request)
    item = await store.get_conversation_item(conversation_id, item_id)
    if item is None:
        raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
    return JSON(item.data)


@router.delete(
    "/conversations/{conversation_id}/items/{item_id}", responses=errors(401, 404, 429, 503)
)
async def delete_item(request: Request, conversation_id: str, item_id: str) -> Response:
    store = _store(request)
    record = await _owned(store, conversation_id, caller_of(request))
    if not await store.delete_conversation_item(conversation_id, item_id):
        raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
    return JSON(_conversation(record))
