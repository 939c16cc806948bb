"""Rebuild the conversation a response continues, from storage alone.

With ``previous_response_id`` the model sees, oldest first, each earlier
response's input and then its output (its stored chain), and then the new
input. Instructions are not carried over: each response brings its own.
A response created with ``store: false`` cannot be continued.

The previous response may have ended holding tool calls for approval
(``mcp_approval_request`` items); the new input answers them with
``mcp_approval_response`` items, which :func:`approvals` checks and turns
into the calls to run first and the refusals to show the model.

A process keeps the conversations it read lately
(:class:`~stepline._engine.history.HistoryCache`), so
a continuation of a response read here before reads only that one earlier
response (its record and chain) and, in one query, that every response the
conversation was read from is still stored: the cost of a turn does not grow
with the conversation's length.

With ``conversation`` instead, the model sees the conversation's items (those
it held when the response was accepted, so a resumed run sees the same), read
as the request's own input is, and then the new input; the response's input
and output join the conversation when it ends (:func:`conversation_items`
shapes them), in the transaction that stores its end.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from stepline._chat.messages import chain_messages, leading_tool_messages
from stepline._engine.history import Conversation, ConversationRead, HeldCall, HistoryCache
from stepline._engine.policies import ApprovedCall
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.items import InputContext, input_messages
from stepline._protocol.request import (
    InputItem,
    McpApprovalResponseItem,
    ResponseRequest,
    parse_request,
)
from stepline._steps import Step, StepKind, call_arguments, call_name
from stepline.errors import InvalidRequest, NotFound
from stepline.store._base import TERMINAL_STATUSES, ResponseRecord, StepStore

__all__ = [
    "approvals",
    "conversation_items",
    "load_conversation",
    "previous_chain_records",
]

_MAX_CHAIN = 1000
#: the stored body's flag for an input that holds the whole earlier conversation
HISTORY_INLINE = "stepline:history_inline"


async def previous_chain_records(store: StepStore, previous_id: str | None) -> list[ResponseRecord]:
    """The records a response continues, oldest first; NotFound names a missing id."""
    records: list[ResponseRecord] = []
    current = previous_id
    while current is not None:
        record = await store.get_response(current)
        if record is None or not record.store:
            raise NotFound(
                f"Previous response with id '{current}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        records.append(record)
        if len(records) > _MAX_CHAIN:
            raise NotFound("previous_response_id chain is too long", param="previous_response_id")
        # a response whose input already held its conversation ends the walk
        current = None if record.body.get(HISTORY_INLINE) else record.previous_response_id
    records.reverse()
    return records


def _held_calls(chain: list[Step]) -> dict[str, HeldCall]:
    model_calls = [s for s in chain if s.kind is StepKind.MODEL_CALL and s.response is not None]
    if not model_calls:
        return {}
    response = model_calls[-1].response
    assert response is not None
    call_of = {item: call for call, item in response.get("call_items", {}).items()}
    calls = {
        c["id"]: {"name": call_name(c), "arguments": call_arguments(c)}
        for c in response["message"].get("tool_calls") or ()
    }
    held: dict[str, HeldCall] = {}
    for item in response["items"]:
        call_id = call_of.get(item["id"])
        if item["type"] == "mcp_approval_request" and call_id is not None and call_id in calls:
            held[item["id"]] = HeldCall(
                call_id=call_id,
                name=calls[call_id]["name"],
                arguments=calls[call_id]["arguments"],
                server_label=item["server_label"],
                shown_name=item["name"],
            )
    return held


async def load_conversation(
    store: StepStore,
    previous_id: str | None,
    *,
    context_for: Callable[[ResponseRequest], InputContext] | None = None,
    request: ResponseRequest | None = None,
    cache: HistoryCache | None = None,
    reading: Hashable = None,
) -> Conversation:
    """Chat messages of every response before this one, oldest first, and the held calls.

    ``context_for`` says how an earlier request's input items read for this
    response's upstream (its client tools, the sealer of ``encrypted_content``);
    ``reading`` names that way of reading, for ``cache``. When ``request``
    (the response being run) names a ``conversation``, its items are the
    history instead."""
    if request is not None and request.conversation is not None:
        context = (
            context_for(request) if context_for else InputContext(tools=ClientTools.of(request))
        )
        return Conversation(history=await _conversation_history(store, request, context), held={})
    if previous_id is None:
        return Conversation(history=[], held={})
    if cache is not None:
        read = await _cached(store, cache, previous_id, reading, context_for)
        if read is not None:
            return read.conversation
    records = await previous_chain_records(store, previous_id)
    read = ConversationRead(conversation=Conversation(history=[], held={}), records=())
    for record in records:
        read = await _extended(store, read, record, context_for)
    if cache is not None and records[-1].status in TERMINAL_STATUSES:
        cache.put(previous_id, reading, read)
    return read.conversation


async def _cached(
    store: StepStore,
    cache: HistoryCache,
    previous_id: str,
    reading: Hashable,
    context_for: Callable[[ResponseRequest], InputContext] | None,
) -> ConversationRead | None:
    """The conversation up to ``previous_id`` from the cache, or from the cached one
    before it and ``previous_id``'s own record; None if neither is cached (or valid)."""
    found = cache.get(previous_id, reading)
    if found is not None:
        return found if await store.stored_ids(found.records) == set(found.records) else None
    record = await store.get_response(previous_id)
    if (
        record is None
        or not record.store
        or record.status not in TERMINAL_STATUSES
        or record.body.get(HISTORY_INLINE)
        or record.previous_response_id is None
    ):
        return None
    before = cache.get(record.previous_response_id, reading)
    if before is None or await store.stored_ids(before.records) != set(before.records):
        return None
    read = await _extended(store, before, record, context_for)
    cache.put(previous_id, reading, read)
    return read


async def _extended(
    store: StepStore,
    read: ConversationRead,
    record: ResponseRecord,
    context_for: Callable[[ResponseRequest], InputContext] | None,
) -> ConversationRead:
    """``read`` followed by ``record``'s input and output."""
    held = read.conversation.held
    request = parse_request(record.body)
    chain = await store.load_chain(record.id, scope=None)
    approved = {
        item.approval_request_id: held[item.approval_request_id].call_id
        for item in request.input
        if isinstance(item, McpApprovalResponseItem) and item.approval_request_id in held
    }
    context = context_for(request) if context_for else InputContext(tools=ClientTools.of(request))
    messages = [
        *read.conversation.history,
        *input_messages(request.input, approved, context),
        *leading_tool_messages(chain),
        *chain_messages(chain),
    ]
    return ConversationRead(
        conversation=Conversation(history=messages, held=_held_calls(chain)),
        records=(*read.records, record.id),
    )


def approvals(request: ResponseRequest, conversation: Conversation) -> list[ApprovedCall]:
    """The held calls this request approves; InvalidRequest names an unknown approval id."""
    approved: list[ApprovedCall] = []
    for index, item in enumerate(request.input):
        if not isinstance(item, McpApprovalResponseItem):
            continue
        call = conversation.held.get(item.approval_request_id)
        if call is None:
            raise InvalidRequest(
                f"No approval request found with id '{item.approval_request_id}'.",
                param=f"input[{index}].approval_request_id",
            )
        if item.approve:
            approved.append(
                ApprovedCall(
                    call_id=call.call_id,
                    name=call.name,
                    arguments=call.arguments,
                    approval_request_id=item.approval_request_id,
                    server_label=call.server_label,
                    shown_name=call.shown_name,
                )
            )
    return approved


_ITEMS = TypeAdapter(list[InputItem])


async def _conversation_history(
    store: StepStore, request: ResponseRequest, context: InputContext
) -> list[dict[str, Any]]:
    """The chat messages of the items ``request``'s conversation held when it was accepted."""
    assert request.conversation is not None
    ref = request.conversation
    stored = await store.list_conversation_items(ref.id, before=ref.upto)
    try:
        items = _ITEMS.validate_python([item.data for item in stored])
    except ValidationError as exc:
        # every stored item was read as an input item once; this is a damaged row
        raise InvalidRequest(
            f"conversation '{ref.id}' holds an item that cannot be read: {exc.errors()[0]['msg']}",
            param="conversation",
        ) from None
    return input_messages(items, None, context)


def conversation_items(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as a conversation keeps and lists them: a message's text ``content`` as one
    part (``input_text``, or ``output_text`` for the assistant), with a ``status``."""
    shaped: list[dict[str, Any]] = []
    for item in items:
        if item.get("type") == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                content = [{"type": part, "text": content}]
            item = {"type": "message", "status": "completed", **item, "content": content}
        shaped.append(item)
    return shaped
