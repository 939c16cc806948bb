"""The SQL of the Conversations API that reads, updates and deletes, on SQLite and PostgreSQL.

:class:`~stepline.store._sql.SqlStore` runs these SQLAlchemy Core statements
on its connections; each function here is one unit of work on an open
connection, and says whether it needs a transaction. Creating a
conversation and appending its items (by a client, or by a response's end,
in the transaction that stores it) are on the store's hot path, in
:mod:`stepline.store._hot`, with the invariants of those appends.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline.store._base import ConversationItem, ConversationRecord
from stepline.store._schema import JsonText, conversation_items, conversations

__all__ = [
    "delete_conversation",
    "delete_item",
    "get_conversation",
    "get_item",
    "list_items",
    "update_conversation",
]

_GET = sa.select(conversations).where(conversations.c.id == sa.bindparam("p_id"))
_UPDATE = (
    sa.update(conversations)
    .where(conversations.c.id == sa.bindparam("p_id"))
    .values(metadata=sa.bindparam("p_metadata", type_=JsonText()))
    .returning(*conversations.c)
)
_DELETE_ITEMS = sa.delete(conversation_items).where(
    conversation_items.c.conversation_id == sa.bindparam("p_id")
)
_DELETE = sa.delete(conversations).where(conversations.c.id == sa.bindparam("p_id"))
_ITEMS = sa.select(
    conversation_items.c.position, conversation_items.c.id, conversation_items.c.data
).where(conversation_items.c.conversation_id == sa.bindparam("p_id"))
_ITEM = _ITEMS.where(conversation_items.c.id == sa.bindparam("p_item"))
_DELETE_ITEM = sa.delete(conversation_items).where(
    conversation_items.c.conversation_id == sa.bindparam("p_id"),
    conversation_items.c.id == sa.bindparam("p_item"),
)


def _record(row: sa.Row[Any]) -> ConversationRecord:
    return ConversationRecord(
        id=row.id,
        created_at=row.created_at,
        metadata=row.metadata,
        key_id=row.key_id,
        next_position=row.next_position,
    )


def _item(row: sa.Row[Any, Any, Any]) -> ConversationItem:
    return ConversationItem(position=row.position, id=row.id, data=row.data)


async def get_conversation(
    connection: AsyncConnection, conversation_id: str
) -> ConversationRecord | None:
    row = (await connection.execute(_GET, {"p_id": conversation_id})).first()
    return None if row is None else _record(row)


async def update_conversation(
    connection: AsyncConnection, conversation_id: str, metadata: dict[str, str]
) -> ConversationRecord | None:
    params = {"p_id": conversation_id, "p_metadata": metadata}
    row = (await connection.execute(_UPDATE, params)).first()
    return None if row is None else _record(row)


async def delete_conversation(connection: AsyncConnection, conversation_id: str) -> bool:
    """Delete the items, then the conversation (a transaction)."""
    await connection.execute(_DELETE_ITEMS, {"p_id": conversation_id})
    return bool((await connection.execute(_DELETE, {"p_id": conversation_id})).rowcount == 1)


async def list_items(
    connection: AsyncConnection,
    conversation_id: str,
    *,
    after: int | None,
    before: int | None,
    limit: int | None,
    descending: bool,
) -> list[ConversationItem]:
    statement = _ITEMS
    if after is not None:
        statement = statement.where(conversation_items.c.position > after)
    if before is not None:
        statement = statement.where(conversation_items.c.position < before)
    position = conversation_items.c.position
    statement = statement.order_by(position.desc() if descending else position)
    if limit is not None:
        statement = statement.limit(limit)
    result = await connection.execute(statement, {"p_id": conversation_id})
    return [_item(row) for row in result]


async def get_item(
    connection: AsyncConnection, conversation_id: str, item_id: str
) -> ConversationItem | None:
    row = (await connection.execute(_ITEM, {"p_id": conversation_id, "p_item": item_id})).first()
    return None if row is None else _item(row)


async def delete_item(connection: AsyncConnection, conversation_id: str, item_id: str) -> bool:
    params = {"p_id": conversation_id, "p_item": item_id}
    return bool((await connection.execute(_DELETE_ITEM, params)).rowcount == 1)
