"""Fixtures of the store suite: every test runs once per backend."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# ``tests/_backends.py`` is shared with the other suites; make it importable
# however pytest was started (a no-op once ``tests`` is on the path).
_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from _backends import SQL_KINDS, backend_params, store_backend  # noqa: E402
from stepline.store import SqlStore, StepStore  # noqa: E402


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
