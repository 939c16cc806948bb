"""Stored API keys: the KeyStore contract on every backend, and the migration that
adopts the keys table an older stepline made itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from stepline.errors import StoreError
from stepline.store import SqlStore, StepStore
from stepline.store._engines import create_store_engine
from stepline.store._keys import KeyRecord
from stepline.store._migrate import alembic_config, migrate_engine
from stepline.store._revisions import current_revision, head_revision
from stepline.store._schema import VERSION_TABLE, metadata
from tests._backends import SQL_KINDS, backend_params, database_url

pytestmark = pytest.mark.timeout(60)


def key(name: str = "ci", **fields: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "id": f"key_{name}",
        "hash": "sha256:" + name.encode().hex().ljust(64, "0"),
        "created_at": 1_700_000_000.5,
    }
    values.update(fields)
    return KeyRecord(name=name, **values)


# -- the contract, on every backend ----------------------------------------------


async def test_a_key_round_trips_every_field(store: StepStore) -> None:
    full = key(
        "ops",
        models=("alpha", "team-*"),
        tools=(),
        rate={"requests_per_second": 2.5, "burst": 4},
        max_concurrent=3,
        admin=True,
    )
    assert await store.keys.add_key(full)
    assert await store.keys.add_key(key("ci"))
    assert await store.keys.list_keys() == [key("ci"), full]
    assert await store.keys.count_keys() == 2


async def test_a_name_is_one_key(store: StepStore) -> None:
    assert await store.keys.add_key(key("ci"))
    again = key("ci", id="key_other", hash="sha256:" + "f" * 64, admin=True)
    assert not await store.keys.add_key(again)
    assert await store.keys.list_keys() == [key("ci")]


async def test_deleting_a_key_says_whether_there_was_one(store: StepStore) -> None:
    assert await store.keys.list_keys() == []
    assert await store.keys.add_key(key("ci"))
    assert await store.keys.delete_key("ci")
    assert not await store.keys.delete_key("ci")
    assert await store.keys.list_keys() == []
    assert await store.keys.count_keys() == 0
    assert await store.keys.add_key(key("ci", id="key_new"))  # the name is free again
    assert [record.id for record in await store.keys.list_keys()] == ["key_new"]


async def test_a_listed_key_is_a_copy(store: StepStore) -> None:
    assert await store.keys.add_key(key("ci", rate={"requests_per_second": 1.0}))
    (listed,) = await store.keys.list_keys()
    assert listed.rate is not None
    listed.rate["requests_per_second"] = 99.0
    assert (await store.keys.list_keys())[0].rate == {"requests_per_second": 1.0}


async def test_keys_outlive_the_responses(store: StepStore) -> None:
    """Keys belong to no response: deleting responses leaves them."""
    assert await store.keys.add_key(key("ci"))
    assert not await store.delete_response("resp_none")
    assert await store.keys.count_keys() == 1


async def test_keys_on_a_broken_database_are_a_store_error(sql_store: SqlStore) -> None:
    async with sql_store.engine.begin() as connection:
        await connection.exec_driver_sql("DROP TABLE stepline_api_keys")
    with pytest.raises(StoreError):
        await sql_store.keys.list_keys()
    with pytest.raises(StoreError):
        await sql_store.keys.add_key(key())
    with pytest.raises(StoreError):
        await sql_store.keys.count_keys()


async def test_concurrent_adds_of_one_name_store_one_key(sql_store: SqlStore) -> None:
    added = await asyncio.gather(
        *(
            sql_store.keys.add_key(key("ci", id=f"key_{n}", hash=f"sha256:{n:064x}"))
            for n in range(5)
        ),
        return_exceptions=True,
    )
    assert sum(result is True for result in added) == 1
    assert [record.name for record in await sql_store.keys.list_keys()] == ["ci"]


# -- the migration from a table made by an older stepline --------------------------


def _old_table(with_ids: bool) -> tuple[sa.MetaData, sa.Table]:
    """``stepline_api_keys`` as the server declared and made it before revision 0005
    (``create_all``, no naming convention); before key ids, without ``id``."""
    old = sa.MetaData()
    columns: list[Any] = [
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("hash", sa.String, nullable=False, unique=True),
        sa.Column("models", sa.Text, nullable=True),
        sa.Column("tools", sa.Text, nullable=True),
        sa.Column("rate", sa.Text, nullable=True),
        sa.Column("max_concurrent", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
    ]
    if with_ids:
        columns.append(sa.Column("id", sa.String, nullable=True))
    table = sa.Table("stepline_api_keys", old, *columns)
    if with_ids:
        sa.Index("ix_stepline_api_keys_id", table.c.id, unique=True)
    return old, table


def _upgrade_to(revision: str) -> Any:
    def upgrade(connection: sa.Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


def _differences(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return list(compare_metadata(context, metadata))


async def _make_old_database(engine: AsyncEngine, *, revision: str | None, with_ids: bool) -> None:
    old, table = _old_table(with_ids)
    async with engine.begin() as connection:
        if revision is not None:
            await connection.run_sync(_upgrade_to(revision))
        await connection.run_sync(old.create_all)
        rows: list[dict[str, Any]] = [
            {
                "name": "ops",
                "hash": "sha256:" + "a" * 64,
                "models": '["alpha"]',
                "tools": "[]",
                "rate": '{"requests_per_second":2.0,"burst":4}',
                "max_concurrent": 3,
                "created_at": 1.5,
            },
            {"name": "ci", "hash": "sha256:" + "b" * 64, "created_at": 2.5},
        ]
        if with_ids:
            rows[0]["id"] = "key_ops"
            rows[1]["id"] = None  # created before ids, in a table that has them since
        for row in rows:
            await connection.execute(sa.insert(table), row)


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
@pytest.mark.parametrize(
    ("revision", "with_ids"),
    [("0004", True), ("0004", False), (None, True)],
    ids=["migrated-with-ids", "migrated-before-ids", "keys-only"],
)
async def test_the_migration_adopts_an_older_keys_table_and_keeps_its_keys(
    kind: str, tmp_path: Path, revision: str | None, with_ids: bool
) -> None:
    """A keys table made by ``create_all`` (keys in it) becomes the schema's, row by row:
    on a database at 0004, and on one that had nothing but keys (``stepline keys
    create`` before any ``stepline serve``)."""
    async with database_url(kind, tmp_path) as url:
        engine = create_store_engine(url, pool_size=1)
        try:
            await _make_old_database(engine, revision=revision, with_ids=with_ids)
            await migrate_engine(engine)
            await migrate_engine(engine)  # a second run finds nothing to do
            assert await current_revision(url) == head_revision()
            async with engine.connect() as connection:
                assert await connection.run_sync(_differences) == []

            store = SqlStore(engine)
            ops = KeyRecord(
                name="ops",
                id="key_ops" if with_ids else "ops",
                hash="sha256:" + "a" * 64,
                created_at=1.5,
                models=("alpha",),
                tools=(),
                rate={"requests_per_second": 2.0, "burst": 4},
                max_concurrent=3,
            )
            ci = KeyRecord(name="ci", id="ci", hash="sha256:" + "b" * 64, created_at=2.5)
            assert await store.keys.list_keys() == [ci, ops]
            # the adopted table takes new keys, and still refuses a taken name or hash
            assert await store.keys.add_key(key("new", admin=True))
            assert not await store.keys.add_key(key("ops"))
            with pytest.raises(StoreError):
                await store.keys.add_key(key("other", hash="sha256:" + "a" * 64))
            assert [record.admin for record in await store.keys.list_keys()] == [
                False,
                True,
                False,
            ]
        finally:
            await engine.dispose()


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_an_older_stepline_can_still_insert_a_key_after_the_migration(
    kind: str, tmp_path: Path
) -> None:
    """During an upgrade an older process may create a key: its INSERT names no admin."""
    async with database_url(kind, tmp_path) as url:
        engine = create_store_engine(url, pool_size=1)
        try:
            await migrate_engine(engine)
            _, old = _old_table(with_ids=True)
            async with engine.begin() as connection:
                await connection.execute(
                    sa.insert(old), {"name": "ci", "hash": "sha256:" + "c" * 64, "created_at": 1.0}
                )
            (record,) = await SqlStore(engine).keys.list_keys()
            assert (record.name, record.id, record.admin) == ("ci", "ci", False)
        finally:
            await engine.dispose()


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_downgrading_keeps_the_keys(kind: str, tmp_path: Path) -> None:
    """The steplines before 0005 make and read the keys table themselves: a downgrade
    leaves it, and upgrading again adopts it."""
    async with database_url(kind, tmp_path) as url:
        engine = create_store_engine(url, pool_size=1)
        try:
            await migrate_engine(engine)
            store = SqlStore(engine)
            assert await store.keys.add_key(key("ci"))

            def downgrade(connection: sa.Connection) -> None:
                config = alembic_config()
                config.attributes["connection"] = connection
                command.downgrade(config, "0004")

            async with engine.begin() as connection:
                await connection.run_sync(downgrade)
            assert await current_revision(url) == "0004"
            await migrate_engine(engine)
            assert await store.keys.list_keys() == [key("ci")]
        finally:
            await engine.dispose()
