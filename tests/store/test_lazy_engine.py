"""A SQL store opened from its URL: the drivers serve at once, the engine comes on first cold use.

``open_store(url, migrate=False)`` (what ``stepline serve`` opens, its database
migrated by a child) makes no SQLAlchemy engine; the hot path, the keys and
the schema's revision run on the drivers, and each path off it (listings,
deletes, conversations, key writes) makes the engine when first called and
answers as a store handed an engine does. Whether SQLAlchemy is imported at
all is a process's question: ``tests/unit/test_imports.py`` asks a server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stepline.errors import ConfigError
from stepline.store._keys import KeyRecord
from stepline.store._listing_values import ResponseQuery
from stepline.store._revisions import current_revision, head_revision, migrate
from stepline.store._sql import SqlStore, open_store
from tests._backends import SQL_KINDS, backend_params, database_url
from tests.store._stored import store_response


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_a_store_opened_from_its_url_makes_its_engine_on_first_cold_use(
    kind: str, tmp_path: Path
) -> None:
    async with database_url(kind, tmp_path) as url:
        assert await current_revision(url) is None
        await migrate(url)
        assert await current_revision(url) == head_revision()
        store = await open_store(url, migrate=False, pool_size=2)
        try:
            assert isinstance(store, SqlStore)
            await store_response(store, "resp_lazy", created_at=1_000.0)
            assert await store.current_revision() == head_revision()
            assert [key.name for key in await store.keys.list_keys()] == []
            assert store._cold is None  # everything so far ran on the drivers

            page = await store.list_summaries(ResponseQuery())
            assert [summary.id for summary in page.summaries] == ["resp_lazy"]
            assert store._cold is not None
            tree = await store.response_tree("resp_lazy")
            assert tree is not None and tree.steps
            assert [record.id for record in await store.list_responses()] == ["resp_lazy"]

            ops = KeyRecord(name="ops", id="key_ops", hash="sha256:" + "0" * 64, created_at=1.0)
            assert await store.keys.add_key(ops)
            assert not await store.keys.add_key(ops)
            assert await store.keys.list_keys() == [ops]
            assert await store.keys.count_keys() == 1
            assert await store.keys.delete_key("ops")

            assert await store.delete_response("resp_lazy")
            assert await store.get_response("resp_lazy") is None
        finally:
            await store.close()


def test_a_store_refuses_a_url_it_cannot_use() -> None:
    with pytest.raises(ConfigError, match="unsupported database URL 'mysql://u:\\*\\*\\*@h/d'"):
        SqlStore("mysql://u:secret@h/d")
