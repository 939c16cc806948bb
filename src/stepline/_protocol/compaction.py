"""Compaction items: a summary the model wrote of a conversation, sealed, and read back.

A ``compaction`` item (from ``POST /v1/responses/compact`` or from a loop's
``context_management``) carries the summary in ``encrypted_content``, sealed
with the server's keys under its own label, so a reasoning token never opens
as a summary and no client can forge or read one. How the opened summary
then stands in for what it summarises is the chat side's rule
(:mod:`stepline._chat.summary`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stepline._protocol.request import MessageItem

__all__ = [
    "SEAL_LABEL",
    "compaction_item",
    "compaction_item_id",
    "user_message_items",
]

#: the sealing label of a compaction summary (reasoning uses its own)
SEAL_LABEL = "compaction"


def compaction_item_id(step_id: str) -> str:
    """The id of the compaction item a loop's step produces, fixed by the step's id."""
    return "cmp_" + step_id.split("_", 1)[-1]


def compaction_item(item_id: str, encrypted_content: str) -> dict[str, Any]:
    """The ``compaction`` output item (``encrypted_content`` is empty while it is made)."""
    return {"id": item_id, "type": "compaction", "encrypted_content": encrypted_content}


def user_message_items(items: Iterable[Any]) -> list[dict[str, Any]]:
    """The user messages among request input items, as the items of a compacted window."""
    found: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, MessageItem) or item.role != "user":
            continue
        dumped: dict[str, Any] = item.model_dump(mode="json", exclude_none=True)
        content = dumped.get("content")
        if isinstance(content, str):
            dumped["content"] = [{"type": "input_text", "text": content}]
        found.append({"status": "completed", **dumped})
    return found
