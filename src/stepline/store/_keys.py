"""Stored API keys: the keys ``stepline keys create`` made, kept with the responses.

The database is where created keys live because every process of a
deployment already shares it, so a key created once works everywhere. The
server's key ring (``_server/auth.py``) and the CLI read and change them only
through :class:`KeyStore`; :class:`SqlKeyStore` keeps them in the
``stepline_api_keys`` table (made by the migrations), :class:`MemoryKeyStore`
in a dict, for a store in memory.

Invariants:

* A key is kept as the hash of its token, never the token.
* A name is one key: adding a name that is taken changes nothing and says so.
* A key's ``id`` (what its responses are stored under) is fixed when it is
  added; a row from before keys had ids has none, and its id is its name.
* Listing is one read outside any transaction: on SQLite it takes no write
  lock, since every process re-reads the keys every few seconds.
* Failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from stepline.store._schema import api_keys

if TYPE_CHECKING:  # the SQL store makes its key store, this module does not import it
    from stepline.store._sql import SqlStore

__all__ = ["KeyRecord", "KeyStore", "MemoryKeyStore", "SqlKeyStore"]


@dataclass(frozen=True, kw_only=True)
class KeyRecord:
    """A stored key: its name, id, hash, what it may do, and when it was made.

    ``models`` and ``tools`` of None mean "all"; ``rate`` is the JSON form of
    the key's token bucket (``requests_per_second``, ``burst``)."""

    name: str
    #: the owner of its responses; a row from before key ids has its name here
    id: str
    hash: str
    created_at: float
    models: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    rate: dict[str, Any] | None = None
    max_concurrent: int | None = None
    admin: bool = False


class KeyStore(Protocol):
    """The stored API keys of a deployment."""

    async def list_keys(self) -> list[KeyRecord]:
        """Every stored key, by name."""
        ...

    async def count_keys(self) -> int:
        """How many keys are stored; reads a table of any earlier stepline too."""
        ...

    async def add_key(self, key: KeyRecord) -> bool:
        """Store ``key``; False (and nothing stored) when its name is taken."""
        ...

    async def delete_key(self, name: str) -> bool:
        """Delete the key named ``name``; False when there was none."""
        ...


class MemoryKeyStore:
    """A :class:`KeyStore` in a dict: the keys of a store in memory."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyRecord] = {}

    async def list_keys(self) -> list[KeyRecord]:
        return [_copy(self._keys[name]) for name in sorted(self._keys)]

    async def count_keys(self) -> int:
        return len(self._keys)

    async def add_key(self, key: KeyRecord) -> bool:
        if key.name in self._keys:
            return False
        self._keys[key.name] = _copy(key)
        return True

    async def delete_key(self, name: str) -> bool:
        return self._keys.pop(name, None) is not None


def _copy(key: KeyRecord) -> KeyRecord:
    # what a caller keeps of its record cannot change the stored one
    return replace(key, rate=None if key.rate is None else dict(key.rate))


# -- SQL ---------------------------------------------------------------------------

_LIST_KEYS = sa.select(api_keys).order_by(api_keys.c.name)
_COUNT_KEYS = sa.select(sa.func.count()).select_from(api_keys)
_KEY_NAMED = sa.select(api_keys.c.name).where(api_keys.c.name == sa.bindparam("p_name"))
_DELETE_KEY = sa.delete(api_keys).where(api_keys.c.name == sa.bindparam("p_name"))


def _tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _record_of(row: sa.Row[Any]) -> KeyRecord:
    return KeyRecord(
        name=row.name,
        id=row.id or row.name,
        hash=row.hash,
        created_at=row.created_at,
        models=_tuple(row.models),
        tools=_tuple(row.tools),
        rate=row.rate,
        max_concurrent=row.max_concurrent,
        admin=bool(row.admin),
    )


def _values_of(key: KeyRecord) -> dict[str, Any]:
    return {
        "name": key.name,
        "id": key.id,
        "hash": key.hash,
        "models": None if key.models is None else list(key.models),
        "tools": None if key.tools is None else list(key.tools),
        "rate": key.rate,
        "max_concurrent": key.max_concurrent,
        "created_at": key.created_at,
        "admin": key.admin,
    }


class SqlKeyStore:
    """A :class:`KeyStore` on the ``stepline_api_keys`` table of a :class:`SqlStore`.

    Its reads run as the store's reads (autocommit), its writes queued with the
    store's writes (on SQLite, behind this process's other writers)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def list_keys(self) -> list[KeyRecord]:
        async def work(connection: AsyncConnection) -> list[KeyRecord]:
            return [_record_of(row) for row in await connection.execute(_LIST_KEYS)]

        return await self._store.run_read(work)

    async def count_keys(self) -> int:
        async def work(connection: AsyncConnection) -> int:
            return int((await connection.execute(_COUNT_KEYS)).scalar_one())

        return await self._store.run_read(work)

    async def add_key(self, key: KeyRecord) -> bool:
        values = _values_of(key)

        async def work(connection: AsyncConnection) -> bool:
            taken = await connection.execute(_KEY_NAMED, {"p_name": key.name})
            if taken.first() is not None:
                return False
            await connection.execute(sa.insert(api_keys), values)
            return True

        return await self._store.run_write(work)

    async def delete_key(self, name: str) -> bool:
        async def work(connection: AsyncConnection) -> bool:
            return (await connection.execute(_DELETE_KEY, {"p_name": name})).rowcount == 1

        return await self._store.run_write(work)
