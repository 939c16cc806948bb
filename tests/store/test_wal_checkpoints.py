"""On SQLite, no commit of the hot connection checkpoints the WAL; the checkpointer does.

A checkpoint writes the WAL back into the database file and syncs it, a few
milliseconds that would land on the request whose commit crossed SQLite's
threshold (1,000 pages). Here the hot connection writes past it, the WAL keeps
every frame, and one checkpoint of the checkpointer copies them all back.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from stepline.store._drivers import SqliteDriver

pytestmark = pytest.mark.timeout(30)

#: rows of two 4 KB pages each: well past SQLite's 1,000-page autocheckpoint
ROWS = 700


def _wal(path: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of them checkpointed), asked of a connection of its own."""
    with sqlite3.connect(path) as other:
        [(_, frames, done)] = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return frames, done


async def test_the_hot_connection_leaves_the_wal_to_the_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "stepline.db"
    driver = SqliteDriver(str(path), asyncio.Lock(), checkpoint_every=3600)
    try:
        await driver.write("CREATE TABLE t (x BLOB)")
        for _ in range(ROWS):
            await driver.write("INSERT INTO t VALUES ($1)", b"x" * 6000)
        # nothing checkpointed yet: no commit reset the WAL, it holds every frame
        frames_before = driver.checkpointer.last_frames
        driver.checkpointer.checkpoint()
        frames = driver.checkpointer.last_frames
        assert (frames_before, frames > 2 * ROWS) == (0, True)
        # a second passive checkpoint finds every frame already written back
        assert _wal(path) == (frames, frames)
    finally:
        await driver.close()
