"""The SQL store's statements off the hot path, on an SQLAlchemy Core async engine.

Listing, finding items, deleting a response, cancelling its steps, the
Conversations API's reads, updates and deletes, the console's reads, and the
units of work of the store's other modules (usage, retention) run here.
:class:`~stepline.store._sql.SqlStore` makes its :class:`ColdPath` on the
first call of one of them: importing this module is what loads SQLAlchemy
(some 18 MB resident), which a process that only runs responses never does.

Invariants:

* On SQLite, writes queue on the store's writer lock (the one the drivers'
  writes take), so they never meet SQLite's busy handler or each other's
  open transaction. Reads run on the autocommit engine and take no write lock.
* A write runs through the store's guard: once started it is not abandoned
  when its caller is cancelled.
* Database failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stepline.errors import StoreError
from stepline.store import _conversations as conversations
from stepline.store import _listing as listing
from stepline.store._base import ConversationItem, ConversationRecord, ResponseRecord
from stepline.store._engines import autocommit_engine, describe_error
from stepline.store._listing_values import ResponsePage, ResponseQuery, ResponseTree
from stepline.store._statements import (
    CANCEL_STEPS,
    DELETE_EVENTS,
    DELETE_ITEMS,
    DELETE_RESPONSE,
    DELETE_STEPS,
    FIND_ITEMS,
    LIST_RESPONSES,
    record_from_row,
)

__all__ = ["ColdPath", "Guard"]

_T = TypeVar("_T")

#: awaits a write so that it is never abandoned once started (``SqlStore.guard``)
Guard = Callable[[Awaitable[Any]], Awaitable[Any]]


class ColdPath:
    """The statements of a :class:`~stepline.store._sql.SqlStore` that run on ``engine``.

    ``writer_lock`` is the store's SQLite writer lock (None on PostgreSQL);
    ``guard`` the store's way of awaiting a write."""

    def __init__(self, engine: AsyncEngine, *, writer_lock: asyncio.Lock | None, guard: Guard):
        self.engine = engine
        self._autocommit = autocommit_engine(engine)
        self._writer_lock = writer_lock
        self._guard = guard

    async def dispose(self) -> None:
        await self.engine.dispose()

    # -- running work --

    async def read(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` on an autocommit connection."""
        try:
            async with self._autocommit.connect() as connection:
                return await work(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store read failed: {describe_error(exc)}") from exc

    async def write(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], *, transaction: bool = False
    ) -> _T:
        """Run ``work``, in one transaction or each statement alone, queued with the
        store's writes and never abandoned once started."""
        result: _T = await self._guard(self._run_write(work, transaction))
        return result

    async def _run_write(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], transaction: bool
    ) -> _T:
        if self._writer_lock is None:
            return await self._run_write_now(work, transaction)
        # SQLite takes one writer at a time, and a writer that finds the lock
        # taken sleeps in growing steps (its busy handler): queue this
        # process's writers here instead, in order, without sleeping
        async with self._writer_lock:
            return await self._run_write_now(work, transaction)

    async def _run_write_now(
        self, work: Callable[[AsyncConnection], Awaitable[_T]], transaction: bool
    ) -> _T:
        try:
            if transaction:
                async with self.engine.begin() as connection:
                    return await work(connection)
            async with self._autocommit.connect() as connection:
                return await work(connection)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"store write failed: {describe_error(exc)}") from exc

    # -- responses --

    async def list_responses(self, limit: int) -> list[ResponseRecord]:
        async def work(connection: AsyncConnection) -> list[ResponseRecord]:
            result = await connection.execute(LIST_RESPONSES, {"p_limit": limit})
            return [record_from_row(row) for row in result]

        return await self.read(work)

    async def find_items(
        self, item_ids: Sequence[str], key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        params = {"p_ids": list(dict.fromkeys(item_ids)), "p_key": key_id}

        async def work(connection: AsyncConnection) -> dict[str, dict[str, Any]]:
            result = await connection.execute(FIND_ITEMS, params)
            return {row.id: row.data for row in result}

        return await self.read(work)

    async def delete_response(self, response_id: str) -> bool:
        params = {"p_id": response_id}

        async def work(connection: AsyncConnection) -> bool:
            await connection.execute(DELETE_EVENTS, params)
            await connection.execute(DELETE_ITEMS, params)
            await connection.execute(DELETE_STEPS, params)
            return (await connection.execute(DELETE_RESPONSE, params)).rowcount == 1

        return await self.write(work, transaction=True)

    async def cancel_steps(self, response_id: str) -> int:
        params = {"p_id": response_id, "p_now": time.time()}

        async def work(connection: AsyncConnection) -> int:
            return (await connection.execute(CANCEL_STEPS, params)).rowcount

        return await self.write(work)

    # -- conversations (the statements are in ``store/_conversations.py``) --

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        async def work(connection: AsyncConnection) -> ConversationRecord | None:
            return await conversations.get_conversation(connection, conversation_id)

        return await self.read(work)

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        async def work(connection: AsyncConnection) -> ConversationRecord | None:
            return await conversations.update_conversation(connection, conversation_id, metadata)

        return await self.write(work)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async def work(connection: AsyncConnection) -> bool:
            return await conversations.delete_conversation(connection, conversation_id)

        return await self.write(work, transaction=True)

    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: int | None,
        before: int | None,
        limit: int | None,
        descending: bool,
    ) -> list[ConversationItem]:
        async def work(connection: AsyncConnection) -> list[ConversationItem]:
            return await conversations.list_items(
                connection,
                conversation_id,
                after=after,
                before=before,
                limit=limit,
                descending=descending,
            )

        return await self.read(work)

    async def get_conversation_item(
        self, conversation_id: str, item_id: str
    ) -> ConversationItem | None:
        async def work(connection: AsyncConnection) -> ConversationItem | None:
            return await conversations.get_item(connection, conversation_id, item_id)

        return await self.read(work)

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        async def work(connection: AsyncConnection) -> bool:
            return await conversations.delete_item(connection, conversation_id, item_id)

        return await self.write(work)

    # -- the console's reads (``store/_listing.py``) --

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        async def work(connection: AsyncConnection) -> ResponsePage:
            return await listing.list_summaries(connection, query)

        return await self.read(work)

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        async def work(connection: AsyncConnection) -> ResponseTree | None:
            return await listing.load_tree(connection, response_id)

        return await self.read(work)
