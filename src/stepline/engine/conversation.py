"""Rebuild the conversation a response continues, from storage alone.

With ``previous_response_id`` the model sees, oldest first, each earlier
response's input and then its output (its stored chain), and then the new
input. Instructions are not carried over: each response brings its own.
A response created with ``store: false`` cannot be continued.
"""

from __future__ import annotations

from typing import Any

from stepline.errors import NotFound
from stepline.protocol.items import chain_messages, input_messages
from stepline.protocol.request import parse_request
from stepline.store.base import ResponseRecord, StepStore

__all__ = ["conversation_history", "previous_chain_records"]

_MAX_CHAIN = 1000


async def previous_chain_records(store: StepStore, previous_id: str | None) -> list[ResponseRecord]:
    """The records a response continues, oldest first; NotFound names a missing id."""
    records: list[ResponseRecord] = []
    current = previous_id
    while current is not None:
        record = await store.get_response(current)
        if record is None or not record.store:
            raise NotFound(
                f"Previous response with id '{current}' not found.", param="previous_response_id"
            )
        records.append(record)
        if len(records) > _MAX_CHAIN:
            raise NotFound("previous_response_id chain is too long", param="previous_response_id")
        current = record.previous_response_id
    records.reverse()
    return records


async def conversation_history(store: StepStore, previous_id: str | None) -> list[dict[str, Any]]:
    """Chat messages of every response before this one, oldest first."""
    messages: list[dict[str, Any]] = []
    for record in await previous_chain_records(store, previous_id):
        request = parse_request(record.body)
        messages.extend(input_messages(request.input))
        messages.extend(chain_messages(await store.load_chain(record.id, scope=None)))
    return messages
