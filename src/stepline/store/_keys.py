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
* The SQL runs on the store's drivers (:mod:`stepline.store._drivers`), as
  the hot path's does: a server re-reading its keys never loads SQLAlchemy.
* Failures surface as :class:`~stepline.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from stepline.store._drivers import dump_json, load_json

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

# the table and columns of ``store/_schema.py``; JSON columns hold orjson text
_COLUMNS = "name, id, hash, created_at, models, tools, rate, max_concurrent, admin"
_LIST_KEYS = f"SELECT {_COLUMNS} FROM stepline_api_keys ORDER BY name"
_COUNT_KEYS = "SELECT count(*) FROM stepline_api_keys"
_KEY_NAMED = "SELECT name FROM stepline_api_keys WHERE name = $1"
_ADD_KEY = f"INSERT INTO stepline_api_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_DELETE_KEY = "DELETE FROM stepline_api_keys WHERE name = $1 RETURNING name"


def _tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _record_of(row: Sequence[Any]) -> KeyRecord:
    name, key_id, digest, created_at, models, tools, rate, max_concurrent, admin = row
    return KeyRecord(
        name=name,
        id=key_id or name,
        hash=digest,
        created_at=created_at,
        models=_tuple(load_json(models)),
        tools=_tuple(load_json(tools)),
        rate=load_json(rate),
        max_concurrent=max_concurrent,
        admin=bool(admin),
    )


def _values_of(key: KeyRecord) -> tuple[Any, ...]:
    return (
        key.name,
        key.id,
        key.hash,
        key.created_at,
        dump_json(None if key.models is None else list(key.models)),
        dump_json(None if key.tools is None else list(key.tools)),
        dump_json(key.rate),
        key.max_concurrent,
        key.admin,
    )


class SqlKeyStore:
    """A :class:`KeyStore` on the ``stepline_api_keys`` table of a :class:`SqlStore`.

    Its statements run on the store's driver: reads on their own (autocommit),
    writes queued with the store's writes (on SQLite, behind this process's
    other writers; never abandoned once started)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def list_keys(self) -> list[KeyRecord]:
        driver = await self._store.hot_driver()
        return [_record_of(row) for row in await driver.fetch(_LIST_KEYS)]

    async def count_keys(self) -> int:
        driver = await self._store.hot_driver()
        [(count,)] = await driver.fetch(_COUNT_KEYS)
        return int(count)

    async def add_key(self, key: KeyRecord) -> bool:
        driver = await self._store.hot_driver()

        async def work() -> bool:
            async with driver.transaction() as tx:
                if await tx.fetch(_KEY_NAMED, key.name):
                    return False
                await tx.fetch(_ADD_KEY, *_values_of(key))
                return True

        return await self._store.guard(work())

    async def delete_key(self, name: str) -> bool:
        driver = await self._store.hot_driver()
        return bool(await self._store.guard(driver.write(_DELETE_KEY, name)))
