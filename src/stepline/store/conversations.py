"""The SQL of the Conversations API: conversations and their items, on SQLite and PostgreSQL.

:class:`~stepline.store.sql.SqlStore` runs these SQLAlchemy Core statements
on its connections; each function here is one unit of work on an open
connection, and says whether it needs a transaction.

Invariants:

* An append reserves its positions with one ``UPDATE ... RETURNING`` of the
  conversation's ``next_position``: on PostgreSQL that locks the
  conversation row until the transaction ends, on SQLite the transaction
  holds the database's write lock, so two appends to one conversation take
  one contiguous run of positions each, in commit order, and never
  interleave.
* :func:`append_items` is what finishing a response calls, inside the
  transaction that stores the response's end: a response's items join its
  conversation exactly when its end is stored, never twice.
* Item ids are unique within a conversation: an appended item whose id the
  conversation already holds gets a fresh one
  (:func:`~stepline.store.base.unique_item_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline.store.base import ConversationItem, ConversationRecord, unique_item_ids
from stepline.store.schema import JsonText, conversation_items, conversations

__all__ = [
    "append_items",
    "create_conversation",
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
_RESERVE = (
    sa.update(conversations)
    .where(conversations.c.id == sa.bindparam("p_id"))
    .values(next_position=conversations.c.next_position + sa.bindparam("p_count"))
    .returning(conversations.c.next_position)
)
_TAKEN_IDS = sa.select(conversation_items.c.id).where(
    conversation_items.c.conversation_id == sa.bindparam("p_id"),
    conversation_items.c.id.in_(sa.bindparam("p_ids", expanding=True)),
)
_INSERT_ITEMS = sa.insert(conversation_items)
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


async def create_conversation(
    connection: AsyncConnection, record: ConversationRecord, items: Sequence[dict[str, Any]]
) -> list[ConversationItem]:
    """Insert the conversation, then append its first items (a transaction)."""
    await connection.execute(
        sa.insert(conversations),
        {
            "id": record.id,
            "created_at": record.created_at,
            "metadata": record.metadata,
            "key_id": record.key_id,
            "next_position": record.next_position,
        },
    )
    appended = await append_items(connection, record.id, items)
    return appended or []


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


async def append_items(
    connection: AsyncConnection, conversation_id: str, items: Sequence[dict[str, Any]]
) -> list[ConversationItem] | None:
    """Append ``items`` contiguously at the end; None if there is no such conversation.

    Runs inside the caller's transaction, which holds the conversation's row
    (or SQLite's write lock) from the reservation until it commits."""
    reserved = (
        await connection.execute(_RESERVE, {"p_id": conversation_id, "p_count": len(items)})
    ).first()
    if reserved is None:
        return None
    if not items:
        return []
    ids = [str(item["id"]) for item in items if item.get("id")]
    taken: set[str] = set()
    if ids:
        found = await connection.execute(_TAKEN_IDS, {"p_id": conversation_id, "p_ids": ids})
        taken.update(found.scalars())
    start = int(reserved.next_position) - len(items)
    stored = [
        ConversationItem(position=start + offset, id=item["id"], data=item)
        for offset, item in enumerate(unique_item_ids(items, taken))
    ]
    await connection.execute(
        _INSERT_ITEMS,
        [
            {
                "conversation_id": conversation_id,
                "position": item.position,
                "id": item.id,
                "data": item.data,
            }
            for item in stored
        ],
    )
    return stored


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
