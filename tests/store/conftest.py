"""Fixtures of the store suite: every test runs once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline.store import SqlStore, StepStore
from tests._backends import SQL_KINDS, backend_params, store_backend


@pytest.fixture(params=backend_params())
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StepStore]:
    """A migrated, empty store on each backend: memory, sqlite, postgres."""
    async with store_backend(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture(params=backend_params(SQL_KINDS))
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    """A migrated, empty SqlStore on each SQL backend: sqlite, postgres."""
    async with store_backend(request.param, tmp_path) as opened:
        assert isinstance(opened, SqlStore)
        yield opened
